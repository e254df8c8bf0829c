//! Query depth, counted the way a limit should count it: introspection is exempt.
//!
//! async-graphql's own `limit_depth` counts every field, so the standard introspection query
//! (graphql-js `getIntrospectionQuery()`: what GraphiQL, Apollo tooling and code generators
//! send, 13+ levels of `ofType`) is refused by any limit that still stops abusive queries.
//! Introspection's depth is fixed by the schema's shape, not by the data, so it cannot be used
//! to make the server do unbounded work; `__schema` and `__type` subtrees are not counted here.
//! Complexity (async-graphql's `limit_complexity`) still applies to everything.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{ServerError, ServerResult, Variables};

use crate::error::code;

/// Refuses operations nested deeper than `max` fields (introspection excepted).
pub struct DepthLimit {
    pub max: usize,
}

impl ExtensionFactory for DepthLimit {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(DepthLimitExtension { max: self.max })
    }
}

struct DepthLimitExtension {
    max: usize,
}

#[async_trait::async_trait]
impl Extension for DepthLimitExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        let depth = document_depth(&doc);
        if depth > self.max {
            let mut e = ServerError::new(
                format!(
                    "the query is nested too deep ({depth} levels; at most {} are allowed)",
                    self.max
                ),
                None,
            );
            e.extensions
                .get_or_insert_with(Default::default)
                .set("code", code::QUERY_TOO_DEEP);
            return Err(e);
        }
        Ok(doc)
    }
}

/// The deepest operation of the document, in fields, not counting `__schema`/`__type`
/// subtrees. Fragments are followed (each measured once; a cycle counts as nothing, and
/// validation refuses it anyway).
pub fn document_depth(doc: &ExecutableDocument) -> usize {
    let mut walker = Walker {
        doc,
        memo: HashMap::new(),
        visiting: Vec::new(),
    };
    doc.operations
        .iter()
        .map(|(_, op)| walker.depth(&op.node.selection_set.node))
        .max()
        .unwrap_or(0)
}

struct Walker<'a> {
    doc: &'a ExecutableDocument,
    memo: HashMap<&'a str, usize>,
    visiting: Vec<&'a str>,
}

impl<'a> Walker<'a> {
    fn depth(&mut self, set: &'a SelectionSet) -> usize {
        let mut deepest = 0;
        for item in &set.items {
            let d = match &item.node {
                Selection::Field(f) => {
                    let name = f.node.name.node.as_str();
                    if name == "__schema" || name == "__type" {
                        0
                    } else {
                        1 + self.depth(&f.node.selection_set.node)
                    }
                }
                Selection::InlineFragment(i) => self.depth(&i.node.selection_set.node),
                Selection::FragmentSpread(s) => {
                    let name = s.node.fragment_name.node.as_str();
                    if let Some(&d) = self.memo.get(name) {
                        d
                    } else if self.visiting.contains(&name) {
                        0
                    } else if let Some(fragment) =
                        self.doc.fragments.get(&s.node.fragment_name.node)
                    {
                        self.visiting.push(name);
                        let d = self.depth(&fragment.node.selection_set.node);
                        self.visiting.pop();
                        self.memo.insert(name, d);
                        d
                    } else {
                        0
                    }
                }
            };
            deepest = deepest.max(d);
        }
        deepest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(q: &str) -> usize {
        document_depth(&async_graphql::parser::parse_query(q).unwrap())
    }

    #[test]
    fn counts_fields_through_fragments_but_not_introspection() {
        assert_eq!(depth("{ a }"), 1);
        assert_eq!(depth("{ a { b { c } } }"), 3);
        assert_eq!(depth("{ a { ...F } } fragment F on T { b { c { d } } }"), 4);
        assert_eq!(depth("{ a { ... on T { b } } }"), 2);
        assert_eq!(
            depth("{ __schema { types { fields { type { ofType { ofType { name } } } } } } }"),
            0
        );
        assert_eq!(depth("{ __typename a { __typename } }"), 2);
        // A cycle does not loop (validation refuses it later).
        assert_eq!(depth("{ a { ...F } } fragment F on T { b { ...F } }"), 2);
        let graphql_js = include_str!("../../../tests/fixtures/graphql/introspection.graphql");
        assert_eq!(depth(graphql_js), 0);
    }

    #[test]
    fn fragment_bombs_are_measured_once() {
        // Each fragment spreads the next one twice: 2^40 paths, 40 fragments.
        let mut q = String::from("{ a { ...F0 } }\n");
        for i in 0..40 {
            q.push_str(&format!(
                "fragment F{i} on T {{ x{i}: b {{ ...F{n} }} y{i}: b {{ ...F{n} }} }}\n",
                n = i + 1
            ));
        }
        q.push_str("fragment F40 on T { c }\n");
        assert_eq!(depth(&q), 1 + 40 + 1);
    }
}

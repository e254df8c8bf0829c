//! What both backends store, independent of the store: payload fields, the checks every
//! write passes, the filters a search and an upsert need, and how a hit is read back.
//!
//! Each backend turns [`Conditions`] into its own filter type and a payload [`Map`] into
//! its own payload; everything else (field names, point ids, validation, parsing) lives
//! here once, so the edge and server backends cannot drift apart.

use std::collections::HashMap;

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::{IndexError, Result};
use crate::types::point_id;
use crate::{FileHit, FileVectors, SearchParams, WindowHit};

// Payload keys.
pub(crate) const FILE_ID: &str = "file_id";
pub(crate) const KIND: &str = "kind";
pub(crate) const DURATION_S: &str = "duration_s";
pub(crate) const FORMAT: &str = "format";
pub(crate) const CREATED_AT: &str = "created_at";
pub(crate) const WINDOW_COUNT: &str = "window_count";
pub(crate) const WINDOW_INDEX: &str = "window_index";
pub(crate) const START_S: &str = "start_s";
pub(crate) const END_S: &str = "end_s";

/// Which points a collection (shard) holds. Windows and files live apart: a file vector
/// is the mean of its windows and would become a hub of their HNSW graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Window,
    File,
}

impl Kind {
    pub(crate) const ALL: [Kind; 2] = [Kind::Window, Kind::File];

    /// The name of the kind: the `kind` payload value, and the suffix of its shard or
    /// collection.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Window => "window",
            Kind::File => "file",
        }
    }

    /// The payload fields a search returns for a hit of this kind.
    pub(crate) fn hit_fields(self) -> &'static [&'static str] {
        match self {
            Kind::Window => &[FILE_ID, WINDOW_INDEX, START_S, END_S],
            // The window count tells the edge store's exact rescoring a file's window ids.
            Kind::File => &[FILE_ID, WINDOW_COUNT],
        }
    }

    /// The payload indexes of this kind's points, which must exist before the first write.
    pub(crate) fn payload_indexes(self) -> Vec<(&'static str, FieldIndex)> {
        let mut indexes = vec![
            (FILE_ID, FieldIndex::Keyword { filterable: false }),
            (FORMAT, FieldIndex::Keyword { filterable: true }),
            (DURATION_S, FieldIndex::Float),
            (
                CREATED_AT,
                FieldIndex::Integer {
                    lookup: false,
                    range: true,
                    filterable: true,
                },
            ),
        ];
        indexes.push(match self {
            Kind::Window => (
                WINDOW_INDEX,
                FieldIndex::Integer {
                    lookup: false,
                    range: true,
                    filterable: false,
                },
            ),
            Kind::File => (
                WINDOW_COUNT,
                FieldIndex::Integer {
                    lookup: true,
                    range: false,
                    filterable: false,
                },
            ),
        });
        indexes
    }
}

/// A payload index. `filterable`: a user filter may make this field selective, so
/// qdrant's payload-aware HNSW links (when enabled) are worth building for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldIndex {
    Keyword {
        filterable: bool,
    },
    Float,
    Integer {
        lookup: bool,
        range: bool,
        filterable: bool,
    },
}

/// One filter condition on a payload field.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Condition {
    /// The field (a string) is any of these values.
    Keyword { key: &'static str, any: Vec<String> },
    /// The field (an integer) equals the value.
    Integer { key: &'static str, value: i64 },
    /// The field (a number) lies in the range; every bound is optional.
    Range { key: &'static str, range: Range },
}

/// Bounds of a [`Condition::Range`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Range {
    pub gt: Option<f64>,
    pub gte: Option<f64>,
    pub lt: Option<f64>,
    pub lte: Option<f64>,
}

/// A conjunction: every `must` holds and no `must_not` does.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Conditions {
    pub must: Vec<Condition>,
    pub must_not: Vec<Condition>,
}

impl Conditions {
    pub(crate) fn is_empty(&self) -> bool {
        self.must.is_empty() && self.must_not.is_empty()
    }
}

/// The points of one file.
pub(crate) fn of_file(file_id: Uuid) -> Condition {
    Condition::Keyword {
        key: FILE_ID,
        any: vec![file_id.to_string()],
    }
}

/// The points of any of these files.
pub(crate) fn of_files<'a>(ids: impl IntoIterator<Item = &'a Uuid>) -> Condition {
    Condition::Keyword {
        key: FILE_ID,
        any: ids.into_iter().map(Uuid::to_string).collect(),
    }
}

/// Files stored without windows (ranked by their file vector).
pub(crate) fn without_windows() -> Condition {
    Condition::Integer {
        key: WINDOW_COUNT,
        value: 0,
    }
}

/// The windows of `file_id` at index `window_count` or later: those a previous, longer
/// version of the file left behind.
pub(crate) fn stale_windows(file_id: Uuid, window_count: u32) -> Conditions {
    Conditions {
        must: vec![
            of_file(file_id),
            Condition::Range {
                key: WINDOW_INDEX,
                range: Range {
                    gte: Some(f64::from(window_count)),
                    ..Range::default()
                },
            },
        ],
        must_not: Vec::new(),
    }
}

/// A search's filter: the user's conditions and the excluded file.
pub(crate) fn search_conditions(params: &SearchParams) -> Conditions {
    let f = &params.filter;
    let mut must = Vec::new();
    if f.min_duration_s.is_some() || f.max_duration_s.is_some() {
        must.push(Condition::Range {
            key: DURATION_S,
            range: Range {
                gte: f.min_duration_s,
                lte: f.max_duration_s,
                ..Range::default()
            },
        });
    }
    if !f.formats.is_empty() {
        must.push(Condition::Keyword {
            key: FORMAT,
            any: f.formats.iter().map(|s| s.to_lowercase()).collect(),
        });
    }
    if f.created_after.is_some() || f.created_before.is_some() {
        // Unix seconds are far below 2^53: exact as f64.
        must.push(Condition::Range {
            key: CREATED_AT,
            range: Range {
                gt: f.created_after.map(|t| t as f64),
                lt: f.created_before.map(|t| t as f64),
                ..Range::default()
            },
        });
    }
    Conditions {
        must,
        must_not: params.exclude_file.map(of_file).into_iter().collect(),
    }
}

/// A vector must have the index's dimension and finite values.
pub(crate) fn check_vector(dim: usize, what: &str, v: &[f32]) -> Result<()> {
    if v.len() != dim {
        return Err(IndexError::VectorDimension {
            what: what.to_owned(),
            got: v.len(),
            expected: dim,
        });
    }
    if !v.iter().all(|x| x.is_finite()) {
        return Err(IndexError::NonFiniteVector {
            what: what.to_owned(),
        });
    }
    Ok(())
}

/// Everything a file must satisfy before any of it is written.
pub(crate) fn check_file(dim: usize, file: &FileVectors) -> Result<()> {
    let id = file.file_id;
    check_vector(dim, &format!("file vector of {id}"), &file.vector)?;
    if !file.duration_s.is_finite() || file.duration_s < 0.0 {
        return Err(IndexError::InvalidArgument(format!(
            "file {id}: duration {} s",
            file.duration_s
        )));
    }
    if u32::try_from(file.windows.len()).is_err() {
        return Err(IndexError::InvalidArgument(format!(
            "file {id}: {} windows",
            file.windows.len()
        )));
    }
    for (i, w) in file.windows.iter().enumerate() {
        check_vector(dim, &format!("window {i} of {id}"), &w.vector)?;
        if !(w.start_s.is_finite() && w.end_s.is_finite() && w.start_s <= w.end_s) {
            return Err(IndexError::InvalidArgument(format!(
                "window {i} of {id}: {} s to {} s",
                w.start_s, w.end_s
            )));
        }
    }
    Ok(())
}

/// Checks a batch and keeps the last occurrence of each file (earlier ones would only
/// fight over its points), in first-seen order.
pub(crate) fn checked_batch(dim: usize, files: Vec<FileVectors>) -> Result<Vec<FileVectors>> {
    let mut last: HashMap<Uuid, FileVectors> = HashMap::with_capacity(files.len());
    let mut order = Vec::with_capacity(files.len());
    for file in files {
        check_file(dim, &file)?;
        let id = file.file_id;
        if last.insert(id, file).is_none() {
            order.push(id);
        }
    }
    Ok(order
        .into_iter()
        .map(|id| last.remove(&id).expect("every id in order is in the map"))
        .collect())
}

/// The writes of one upsert: every window point, the windows that previous versions of the
/// files left behind (one conjunction per file), and the file points. A backend writes the
/// windows first, then deletes the stale ones, then the file points, so a file that `count`
/// reports has its windows.
pub(crate) struct Upsert {
    pub windows: Vec<Point>,
    pub stale: Vec<Conditions>,
    pub files: Vec<Point>,
}

/// Checks a batch (see [`checked_batch`]) and splits it into its writes; `None` for an
/// empty batch.
pub(crate) fn plan_upsert(dim: usize, files: Vec<FileVectors>) -> Result<Option<Upsert>> {
    let files = checked_batch(dim, files)?;
    if files.is_empty() {
        return Ok(None);
    }
    let mut plan = Upsert {
        windows: Vec::new(),
        stale: Vec::with_capacity(files.len()),
        files: Vec::with_capacity(files.len()),
    };
    for file in files {
        let window_count = file.windows.len() as u32; // checked by `checked_batch`
        plan.stale.push(stale_windows(file.file_id, window_count));
        let (file_point, windows) = points(file);
        plan.files.push(file_point);
        plan.windows.extend(windows);
    }
    Ok(Some(plan))
}

/// A point to write: its id, vector and payload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Point {
    pub id: Uuid,
    pub vector: Vec<f32>,
    pub payload: Map<String, Value>,
}

/// The points of a file: its file point and its window points, in window order.
pub(crate) fn points(file: FileVectors) -> (Point, Vec<Point>) {
    let FileVectors {
        file_id,
        duration_s,
        format,
        created_at,
        vector,
        windows,
    } = file;
    let mut common = Map::new();
    common.insert(FILE_ID.into(), Value::from(file_id.to_string()));
    common.insert(DURATION_S.into(), Value::from(duration_s));
    common.insert(FORMAT.into(), Value::from(format.to_lowercase()));
    common.insert(CREATED_AT.into(), Value::from(created_at));

    let mut payload = common.clone();
    payload.insert(KIND.into(), Value::from(Kind::File.name()));
    payload.insert(WINDOW_COUNT.into(), Value::from(windows.len()));
    let file_point = Point {
        id: point_id::file(file_id),
        vector,
        payload,
    };
    let window_points = windows
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let index = i as u32; // checked by `check_file`
            let mut payload = common.clone();
            payload.insert(KIND.into(), Value::from(Kind::Window.name()));
            payload.insert(WINDOW_INDEX.into(), Value::from(index));
            payload.insert(START_S.into(), Value::from(w.start_s));
            payload.insert(END_S.into(), Value::from(w.end_s));
            Point {
                id: point_id::window(file_id, index),
                vector: w.vector,
                payload,
            }
        })
        .collect();
    (file_point, window_points)
}

/// Reads a search hit of `kind` back from its payload (`point`: the point's id, for errors).
pub(crate) fn parse_hit(
    kind: Kind,
    point: &dyn std::fmt::Display,
    payload: &Map<String, Value>,
    score: f32,
) -> Result<FileHit> {
    let corrupt = |reason: String| IndexError::CorruptPayload {
        point: point.to_string(),
        reason,
    };
    let field = |name: &str| {
        payload
            .get(name)
            .ok_or_else(|| corrupt(format!("no `{name}`")))
    };
    let file_id = field(FILE_ID)?
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| corrupt(format!("`{FILE_ID}` is not a UUID")))?;
    let best_window = match kind {
        Kind::File => None,
        Kind::Window => {
            let index = field(WINDOW_INDEX)?
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| corrupt(format!("`{WINDOW_INDEX}` is not a window index")))?;
            let seconds = |name: &str| {
                field(name)?
                    .as_f64()
                    .ok_or_else(|| corrupt(format!("`{name}` is not a number")))
            };
            Some(WindowHit {
                index,
                start_s: seconds(START_S)?,
                end_s: seconds(END_S)?,
                score,
            })
        }
    };
    Ok(FileHit {
        file_id,
        score,
        best_window,
    })
}

/// Merges the files without windows (ranked by their file vector) into window-ranked hits.
/// Stable: on a tie, files ranked by a window stay first.
pub(crate) fn merge_bare_files(hits: &mut Vec<FileHit>, bare: Vec<FileHit>, limit: usize) {
    if bare.is_empty() {
        return;
    }
    hits.extend(bare);
    hits.sort_by(|a, b| b.score.total_cmp(&a.score));
    hits.truncate(limit);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SearchFilter, WindowVector};

    #[test]
    fn search_conditions_translate_every_filter_field() {
        let exclude = Uuid::from_u128(7);
        let params = SearchParams {
            filter: SearchFilter {
                min_duration_s: Some(1.5),
                max_duration_s: None,
                formats: vec!["FLAC".into(), "wav".into()],
                created_after: Some(10),
                created_before: Some(20),
            },
            exclude_file: Some(exclude),
            ..SearchParams::default()
        };
        let c = search_conditions(&params);
        assert_eq!(
            c.must,
            vec![
                Condition::Range {
                    key: DURATION_S,
                    range: Range {
                        gte: Some(1.5),
                        ..Range::default()
                    }
                },
                Condition::Keyword {
                    key: FORMAT,
                    any: vec!["flac".into(), "wav".into()]
                },
                Condition::Range {
                    key: CREATED_AT,
                    range: Range {
                        gt: Some(10.0),
                        lt: Some(20.0),
                        ..Range::default()
                    }
                },
            ]
        );
        assert_eq!(c.must_not, vec![of_file(exclude)]);
        assert!(search_conditions(&SearchParams::default()).is_empty());
    }

    #[test]
    fn payloads_round_trip_through_parse_hit() {
        let id = Uuid::from_u128(42);
        let file = FileVectors {
            file_id: id,
            duration_s: 12.5,
            format: "M4A/AAC".into(),
            created_at: 1_700_000_000,
            vector: vec![1.0, 0.0],
            windows: vec![
                WindowVector {
                    start_s: 0.0,
                    end_s: 10.0,
                    vector: vec![1.0, 0.0],
                },
                WindowVector {
                    start_s: 2.5,
                    end_s: 12.5,
                    vector: vec![0.0, 1.0],
                },
            ],
        };
        let (file_point, windows) = points(file);
        assert_eq!(file_point.id, point_id::file(id));
        assert_eq!(file_point.payload[FORMAT], "m4a/aac");
        assert_eq!(file_point.payload[WINDOW_COUNT], 2);
        assert_eq!(windows[1].id, point_id::window(id, 1));
        let hit = parse_hit(Kind::Window, &windows[1].id, &windows[1].payload, 0.5).unwrap();
        assert_eq!(hit.file_id, id);
        let w = hit.best_window.unwrap();
        assert_eq!((w.index, w.start_s, w.end_s, w.score), (1, 2.5, 12.5, 0.5));
        let hit = parse_hit(Kind::File, &file_point.id, &file_point.payload, 0.25).unwrap();
        assert_eq!((hit.file_id, hit.best_window), (id, None));

        let mut broken = windows[0].payload.clone();
        broken.remove(START_S);
        let err = parse_hit(Kind::Window, &"p", &broken, 0.0).unwrap_err();
        assert!(err.to_string().contains("no `start_s`"), "{err}");
    }

    #[test]
    fn batches_keep_the_last_occurrence_in_first_seen_order() {
        let file = |id: u128, d: f64| FileVectors {
            file_id: Uuid::from_u128(id),
            duration_s: d,
            format: "wav".into(),
            created_at: 0,
            vector: vec![1.0],
            windows: Vec::new(),
        };
        let batch = checked_batch(1, vec![file(1, 1.0), file(2, 2.0), file(1, 3.0)]).unwrap();
        let got: Vec<(u128, f64)> = batch
            .iter()
            .map(|f| (f.file_id.as_u128(), f.duration_s))
            .collect();
        assert_eq!(got, vec![(1, 3.0), (2, 2.0)]);
        assert!(checked_batch(2, vec![file(1, 1.0)]).is_err());
        assert!(checked_batch(1, vec![file(1, f64::NAN)]).is_err());
    }
}

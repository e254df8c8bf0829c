// Starts GraphiQL against this server: queries and mutations over HTTP, subscriptions over
// graphql-transport-ws. An API key saved by the web client (localStorage "traum.apiKey") is
// sent as a Bearer token and in connection_init, so GraphiQL works on servers that want keys.
(function () {
  "use strict";
  var loc = window.location;
  var wsUrl = (loc.protocol === "https:" ? "wss://" : "ws://") + loc.host + "/graphql";
  var key = null;
  try {
    key = window.localStorage.getItem("traum.apiKey");
  } catch (e) {
    key = null;
  }
  var auth = key ? { Authorization: "Bearer " + key } : {};
  var fetcher = GraphiQL.createFetcher({
    url: "/graphql",
    subscriptionUrl: wsUrl,
    headers: auth,
    wsConnectionParams: auth,
  });
  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultEditorToolsVisibility: true,
      defaultQuery:
        "# Traum Engine: search your audio by what it sounds like.\n" +
        "{\n  search(text: \"warm analog bass with slow attack\", limit: 5) {\n" +
        "    results { score file { originalName durationS } bestWindow { startS endS } }\n  }\n}\n",
    })
  );
})();

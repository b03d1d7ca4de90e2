"""HTTP: the API app (node.http.app, one router per area), bearer-token auth, the
answer stream of questions and answers, and the page (static/)."""

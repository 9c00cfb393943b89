// Package viewhttp carries the controller's view (package healthview) over
// HTTP: the control plane's Publisher serves it on Path with a long poll
// (?wait=<version>), and readers Fetch it once or keep it current with a
// Watcher. It is apart from healthview so the proxy-wasm plugin, which
// shares the view's types and rules, does not link net/http.
package viewhttp

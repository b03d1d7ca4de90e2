"""The OHIF Viewer (prebuilt @ohif/app from npm, which `make ohif` unpacks into .ohif/app)
served offline on one loopback origin, with /dicom-web proxied to an Orthanc's DICOMweb
plugin, so that the browser sees a single origin (no CORS) and nothing outside.

- /app-config.js: written here; one DICOMweb data source at {origin}/dicom-web.
- /dicom-web/...: forwarded to Orthanc with the browser's Host header, so that the
  BulkDataURIs Orthanc writes into its metadata point back at this origin.
- any other path: the file under dist/ when there is one, else index.html (the app's
  own client-side routes, e.g. /viewer?StudyInstanceUIDs=...).
"""

from __future__ import annotations

import http.client
import mimetypes
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OHIF_VERSION = "3.13.2"  # the Makefile's OHIF_VERSION
OHIF_DIST = ROOT / ".ohif" / "app" / "dist"
OHIF_STAMP = ROOT / ".ohif" / f".installed-{OHIF_VERSION}"

APP_CONFIG = """\
window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  // No onboarding tour over the viewport.
  customizationService: { 'ohif.tours': { $set: [] } },
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  showErrorDetails: 'always',
  investigationalUseDialog: { option: 'never' },
  strictZSpacingForVolumeViewport: true,
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (test PACS)',
        name: 'orthanc',
        wadoUriRoot: window.location.origin + '/dicom-web',
        qidoRoot: window.location.origin + '/dicom-web',
        wadoRoot: window.location.origin + '/dicom-web',
        qidoSupportsIncludeField: false,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
"""

_TYPES = {".js": "application/javascript", ".mjs": "application/javascript",
          ".wasm": "application/wasm", ".css": "text/css", ".json": "application/json",
          ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml"}
# Request headers the proxy passes on to Orthanc (hop-by-hop ones stay behind).
_FORWARDED = ("accept", "content-type", "host", "range")


class OhifViewer:
    """with OhifViewer(orthanc_url) as viewer: browser.get(viewer.viewer_url(study_uid))."""

    def __init__(self, orthanc_url: str, dist: Path = OHIF_DIST):
        if not (dist / "index.html").is_file() or not OHIF_STAMP.exists():
            raise RuntimeError(f"the OHIF Viewer is not installed in {dist}: run `make ohif`")
        self.dist = dist.resolve()
        self.orthanc = urllib.parse.urlsplit(orthanc_url)
        # (method, path, status); query values left out (QIDO queries carry patient IDs)
        self.requests: list[tuple[str, str, int]] = []
        self.proxy_errors: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def viewer_url(self, study_uid: str, mode: str = "viewer") -> str:
        return f"{self.url}/{mode}?StudyInstanceUIDs={urllib.parse.quote(study_uid)}"

    def __enter__(self) -> "OhifViewer":
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _record(self, method: str, path: str, status: int) -> None:
        parts = urllib.parse.urlsplit(path)
        keys = [k for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
        kept = parts.path + ("?" + "&".join(f"{k}=…" for k in keys) if keys else "")
        with self._lock:
            self.requests.append((method, kept, status))

    def _handler_class(self):
        viewer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: requests are kept in viewer.requests
                pass

            def do_GET(self) -> None:
                self._serve()

            def do_HEAD(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def _serve(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                if path == "/dicom-web" or path.startswith("/dicom-web/"):
                    return self._proxy()
                if path == "/app-config.js":
                    return self._send(200, APP_CONFIG.encode(), "application/javascript")
                file = (viewer.dist / urllib.parse.unquote(path).lstrip("/")).resolve()
                if file.is_relative_to(viewer.dist) and file.is_file():
                    kind = _TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0]
                    return self._send(200, file.read_bytes(), kind or "application/octet-stream")
                if Path(path).suffix in (".js", ".css", ".wasm", ".map", ".json", ".png", ".ico"):
                    return self._send(404, b"not found", "text/plain")
                return self._send(200, (viewer.dist / "index.html").read_bytes(), _TYPES[".html"])

            def _send(self, status: int, body: bytes, content_type: str,
                      headers: list[tuple[str, str]] = ()) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                viewer._record(self.command, self.path, status)

            def _proxy(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() in _FORWARDED}
                connection = http.client.HTTPConnection(
                    viewer.orthanc.hostname, viewer.orthanc.port, timeout=60)
                try:
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    data = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    with viewer._lock:
                        viewer.proxy_errors.append(
                            f"{self.command} {urllib.parse.urlsplit(self.path).path}: {exc!r}")
                    return self._send(502, b"Orthanc unreachable", "text/plain")
                finally:
                    connection.close()
                kept = [(k, v) for k, v in response.getheaders()
                        if k.lower() not in ("content-type", "content-length", "connection", "cache-control",
                                             "transfer-encoding", "keep-alive")]
                self._send(response.status, data,
                           response.getheader("Content-Type") or "application/octet-stream", kept)

        return Handler

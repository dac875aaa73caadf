"""A stand-in identity-provider users API: 250 users, 100 a page, `fromModifiedTime` inclusive."""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse

USERS = [
    {"id": f"u-{i:04d}", "email": f"user{i}@example.com", "displayName": f"User {i}", "status": "active",
     "groups": ["staff"], "created": "2025-01-01T00:00:00Z", "modifiedTime": f"2026-11-{1 + i // 20:02d}T00:00:00Z"}
    for i in range(250)
]


class Users(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.headers.get("Authorization") != "Bearer demo":
            self.send_response(401)
            self.end_headers()
            return
        query = parse_qs(urlparse(self.path).query)
        since = query.get("fromModifiedTime", [""])[0]
        offset = int(query.get("pageToken", ["0"])[0])
        matching = [u for u in USERS if u["modifiedTime"] >= since]
        body = {"users": matching[offset:offset + 100],
                "nextPageToken": str(offset + 100) if offset + 100 < len(matching) else None}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    HTTPServer(("127.0.0.1", port), Users).serve_forever()

// The chapter's hello world: one Node process, one event loop.
// Usage: node node-hello.js [PORT]   (or PORT=... node node-hello.js)
'use strict';
const http = require('http');

const port = Number(process.argv[2] || process.env.PORT || 8000);

http.createServer(function (req, res) {
  // Same body and type as the other peers, so every server writes the same bytes.
  res.writeHead(200, { 'Content-Type': 'text/plain' });
  res.end('Hello World\n');
}).listen(port, '127.0.0.1');

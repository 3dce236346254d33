// The app behind bench/proxy.sh's traffic shapes (issue 11). Node's http server on
// 127.0.0.1:$PORT; it counts the TCP connections it accepted, so the bench can tell how
// many upstream connections a proxy opened per 100 requests.
//
//   GET  /json?size=N   a JSON body of N bytes (Content-Length)
//   GET  /blob?size=N   N bytes of application/octet-stream (Content-Length), written from
//                       one preallocated buffer
//   GET  /chunked       about 16 KiB as 8 writes of 2 KiB without Content-Length (chunked)
//   POST /upload        reads the body, answers with its length
//   GET  /conns         the number of connections accepted so far (text)
'use strict';
const http = require('node:http');
const port = Number(process.env.PORT || 18080);

let accepted = 0;
const bodies = new Map();
function json(size) {
  let b = bodies.get(size);
  if (!b) {
    const pad = Math.max(0, size - 12);
    b = Buffer.from(`{"pad":"${'x'.repeat(pad)}"}`.slice(0, Math.max(size, 12)));
    bodies.set(size, b);
  }
  return b;
}
const blobs = new Map();
function blob(size) {
  let b = blobs.get(size);
  if (!b) { b = Buffer.alloc(size, 120); blobs.set(size, b); }
  return b;
}
const piece = Buffer.alloc(2048, 121);

const server = http.createServer((req, res) => {
  const [path, query] = req.url.split('?');
  const size = Number((query || '').replace(/^size=/, '')) || 600;
  if (req.method === 'POST' || req.method === 'PUT') {
    let n = 0;
    req.on('data', (d) => { n += d.length; });
    req.on('end', () => {
      const b = String(n);
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': b.length });
      res.end(b);
    });
    return;
  }
  if (path === '/conns') {
    const b = String(accepted);
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': b.length });
    res.end(b);
  } else if (path === '/blob') {
    const b = blob(size);
    res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': b.length });
    res.end(b);
  } else if (path === '/chunked') {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    for (let i = 0; i < 7; i++) res.write(piece);
    res.end(piece);
  } else {
    const b = json(size);
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': b.length });
    res.end(b);
  }
});
server.on('connection', () => { accepted++; });
server.keepAliveTimeout = 65000;
server.headersTimeout = 66000;
server.listen(port, '127.0.0.1');

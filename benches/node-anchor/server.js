'use strict';
// The classic `ws` broadcast room, as the anchor for benches/scripts/load.sh.
// It speaks the subset of the chat protocol the loadgen uses (../../../shared/DESIGN.md):
// `join` -> `welcome`; `message` -> `{"type":"message","id","ts","from","text"}` to every
// joined client, the sender included. No presence, history, nick checks or rate limits:
// it does less than chat-server, so ratios against it are conservative.
// Usage: node server.js [--addr 127.0.0.1:8091]
const { WebSocketServer, WebSocket } = require('ws');

const i = process.argv.indexOf('--addr');
const [host, port] = (i > 0 ? process.argv[i + 1] : '127.0.0.1:8091').split(':');
const wss = new WebSocketServer({ host, port: Number(port), path: '/ws', maxPayload: 65536 });
let nextId = 1;

wss.on('connection', (ws) => {
  ws.on('error', () => {}); // a reset peer is not a crash
  ws.on('message', (data) => {
    let msg;
    try { msg = JSON.parse(data); } catch { return ws.send('{"type":"error","code":"bad_request"}'); }
    if (ws.nick === undefined) {
      if (msg.type !== 'join' || typeof msg.nick !== 'string') return ws.send('{"type":"error","code":"not_joined"}');
      ws.nick = msg.nick;
      ws.send(JSON.stringify({ type: 'welcome', nick: ws.nick, users: [], history: [] }));
    } else if (msg.type === 'message' && typeof msg.text === 'string') {
      // Serialize once, then the classic loop: one send per open, joined client.
      const out = Buffer.from(JSON.stringify({ type: 'message', id: nextId++, ts: Date.now(), from: ws.nick, text: msg.text }));
      for (const client of wss.clients) {
        if (client.readyState === WebSocket.OPEN && client.nick !== undefined) client.send(out, { binary: false });
      }
    }
  });
});
wss.on('listening', () => console.error(`node-anchor: listening on ws://${host}:${port}/ws`));

// A js-libp2p node (another libp2p implementation, not fabnode) connects to a fabnode node,
// pings it, reads its identify record and subscribes to the public ledger topic; it prints one
// JSON line once a ledger entry arrives, and exits non-zero after 20 s without one.
// Usage: node interop.mjs <multiaddr of the node, with /p2p/> <network>
import './polyfill.mjs'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { gossipsub } from '@chainsafe/libp2p-gossipsub'
import { multiaddr } from '@multiformats/multiaddr'

const [addr, network] = process.argv.slice(2)
const topic = `fabnode/v1/${network}/ledger`
const node = await createLibp2p({
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify(), ping: ping(), pubsub: gossipsub({ globalSignaturePolicy: 'StrictNoSign' }) },
})
const out = { ok: false }
let finished = false
const done = (code) => {
  if (finished) return
  finished = true
  console.log(JSON.stringify(out))
  node.stop().finally(() => process.exit(code))
}
setTimeout(() => { out.error = 'no ledger entry within 20 s'; done(1) }, 20000)

const ma = multiaddr(addr)
const conn = await node.dial(ma)
out.rtt_ms = await node.services.ping.ping(ma)
for (let i = 0; i < 100 && out.agent === undefined; i++) {
  try {
    const p = await node.peerStore.get(conn.remotePeer)
    const agent = p.metadata.get('AgentVersion')
    if (agent) {
      out.agent = new TextDecoder().decode(agent)
      out.protocols = p.protocols
    }
  } catch (e) {}
  await new Promise((r) => setTimeout(r, 50))
}
node.services.pubsub.addEventListener('message', (ev) => {
  if (ev.detail.topic !== topic) return
  const d = ev.detail.data
  // Gossip payloads are CBOR [1, kind, body]: 0x83 0x01 then 0x01 for an entry.
  if (d[0] === 0x83 && d[1] === 1 && d[2] === 1) {
    out.entry_bytes = d.length
    out.ok = true
    done(0)
  }
})
node.services.pubsub.subscribe(topic)
// The test waits for this line before it submits a job.
console.error('subscribed')

//! The MCP wire model for Portcullis: JSON-RPC 2.0 envelopes, the protocol revisions a gateway
//! must tell apart, Server-Sent Events, and the upstream transports (the gateway as an MCP
//! client; see `upstream`). Knows nothing of tenants or policies. Protocol decisions are in
//! README.md.

pub mod jsonrpc;
pub mod sse;
pub mod stateless;
pub mod upstream;
pub mod version;

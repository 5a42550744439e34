//! The MCP wire model for Portcullis: JSON-RPC 2.0 envelopes and the protocol revisions a
//! gateway must tell apart. Transports (Streamable HTTP, legacy HTTP+SSE, stdio) come with the
//! gateway. Knows nothing of tenants or policies.

pub mod jsonrpc;
pub mod version;

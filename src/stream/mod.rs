//! RFC 6120 stream negotiation state machines (S2S in/out, C2S).

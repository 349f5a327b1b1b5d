//! TCP channel with framing and a protocol-version handshake. OWNER: net helper.

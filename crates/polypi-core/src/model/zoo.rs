//! Reference networks NET-M, NET-C, NET-R18 (reference.md). OWNER: model helper.

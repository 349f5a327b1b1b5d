//! Compile passes: Graph + weights -> Plan. OWNER: model helper.

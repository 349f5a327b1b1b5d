#!/usr/bin/env python3
# Copies a polypi model file with the graph's frac_bits changed (stress tests of range safety,
# docs/range-safety.md). Usage: scripts/set-frac-bits.py IN OUT FRAC
import json, struct, sys
src, dst, frac = sys.argv[1], sys.argv[2], int(sys.argv[3])
b = open(src, 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n])
g = json.loads(h['__metadata__']['polypi.graph'])
g['frac_bits'] = frac
h['__metadata__']['polypi.graph'] = json.dumps(g)
hj = json.dumps(h).encode()
hj += b' ' * ((8 - len(hj) % 8) % 8)
open(dst, 'wb').write(struct.pack('<Q', len(hj)) + hj + b[8 + n:])

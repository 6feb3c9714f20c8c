#!/usr/bin/env python3
"""Checks that no two modules of a crate import each other in a circle.

An edge a -> b is any `crate::b` path in module a's code (comments and the unit tests
excluded). Prints one line per crate and exits 1 if any crate has a cycle, naming it.
"""
import os, re, sys, itertools
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates")
bad = 0
for crate in sorted(os.listdir(root)):
    src = os.path.join(root, crate, 'src')
    if not os.path.isdir(src): continue
    mods = {}
    for dp, _, fs in os.walk(src):
        for f in fs:
            if f.endswith('.rs'):
                p = os.path.join(dp, f)
                rel = os.path.relpath(p, src)[:-3]
                top = rel.split('/')[0]
                if top in ('lib', 'main'): continue
                text = open(p).read()
                text = re.split(r'#\[cfg\(test\)\]\s*mod tests', text)[0]
                text = '\n'.join(l for l in text.splitlines() if not l.lstrip().startswith('//'))
                mods.setdefault(top, set())
                for m in re.findall(r'crate::([a-z_0-9]+)', text):
                    if m != top: mods[top].add(m)
                # `use crate::{a, b::c}`
                for grp in re.findall(r'crate::\{([^}]*)\}', text):
                    for m in re.findall(r'(?:^|,)\s*([a-z_0-9]+)', grp):
                        if m != top: mods[top].add(m)
    names = set(mods)
    edges = {a: {b for b in bs if b in names} for a, bs in mods.items()}
    # find cycles via Tarjan SCC
    index = {}; low = {}; stack = []; on = set(); sccs = []; i = [0]
    def strong(v):
        index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
        for w in edges[v]:
            if w not in index: strong(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: sccs.append(sorted(comp))
    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index: strong(v)
    status = 'no cycles' if not sccs else 'CYCLES: ' + '; '.join(' <-> '.join(c) for c in sccs)
    bad += len(sccs)
    print(f'{crate:22} {len(names):3} modules  {status}')
sys.exit(1 if bad else 0)

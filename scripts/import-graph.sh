#!/bin/sh
# Prints the crate's module import graph, one edge `a -> b` a line (a file's module imports,
# or names a path in, module b; test modules excluded), then the import cycles (strongly
# connected components of more than one module). Usage: scripts/import-graph.sh [src dir]
# Issue 12: the layering rule itself is enforced by the unit test in src/layering.rs.
set -eu
exec python3 - "${1:-$(dirname "$0")/../src}" <<'PY'
import os, re, sys

src = os.path.normpath(sys.argv[1])
mods = {}
for root, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".rs") or f in ("main.rs",):
            continue
        rel = os.path.relpath(os.path.join(root, f), src)[:-3].split(os.sep)
        if rel[-1] in ("mod", "lib"):
            rel = rel[:-1]
        mods["::".join(rel) or "crate"] = os.path.join(root, f)

def expand(prefix, text):
    # expand a use tree `a::{b, c::{d}}` into full paths
    text = text.strip()
    if not text:
        return []
    i = text.find("{")
    if i < 0:
        return [prefix + text.split(" as ")[0].strip()]
    head = text[:i]
    body = text[i + 1 : text.rfind("}")]
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(cur); cur = ""; continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        out += expand(prefix + head, p)
    return out

def resolve(path, me, is_dir_mod):
    segs = [s for s in path.split("::") if s]
    if not segs:
        return None
    base = me.split("::") if me != "crate" else []
    if segs[0] == "crate":
        segs = segs[1:]
    elif segs[0] in ("super", "self"):
        cur = base if is_dir_mod else base[:-1]
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                cur = cur[:-1]
            segs = segs[1:]
        segs = cur + segs
    elif is_dir_mod and "::".join(base + segs[:1]) in mods:
        segs = base + segs  # a child module named without `self::`
    else:
        return None
    for n in range(len(segs), 0, -1):
        m = "::".join(segs[:n])
        if m in mods:
            return m
    return None

edges = set()
for me, path in mods.items():
    text = open(path).read()
    cut = re.search(r"^#\[cfg\(test\)\]\s*\n\s*mod tests", text, re.M)
    if cut:
        text = text[: cut.start()]
    # comments, strings and char literals are not imports (one pass, so `"http://"` is a string)
    text = re.sub(
        r'//[^\n]*|r(#+)"[\s\S]*?"\1|"(?:\\[\s\S]|[^"\\])*"|\'(?:\\.|[^\\\'])\'',
        lambda m: "" if m.group(0).startswith("//") else '""',
        text,
    )
    is_dir_mod = os.path.basename(path) in ("mod.rs", "lib.rs")
    paths = []
    for m in re.finditer(r"\buse\s+([^;]*);", text):
        paths += expand("", m.group(1))
    paths += re.findall(r"(?<![\w:])\w+(?:::\w+)+", text)
    for p in paths:
        t = resolve(p, me, is_dir_mod)
        if t and t != me:
            edges.add((me, t))

for a, b in sorted(edges):
    print(f"{a} -> {b}")

# Tarjan's strongly connected components
graph = {m: sorted(b for a, b in edges if a == m) for m in mods}
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)
def visit(v):
    index[v] = low[v] = counter[0]; counter[0] += 1
    stack.append(v); on.add(v)
    for w in graph[v]:
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(sorted(comp))
for v in sorted(graph):
    if v not in index:
        visit(v)
print(f"# {len(edges)} edges, {len(mods)} modules")
for c in sccs:
    print(f"# cycle of {len(c)}: {' '.join(c)}")
PY

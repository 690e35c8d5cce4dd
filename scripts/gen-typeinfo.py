#!/usr/bin/env python3
"""Generates control/src/registry/typeinfo.rs: the per-type field table of every kind
wasmkube serves, derived from the k8s-openapi type definitions.

Run by hand whenever the k8s-openapi version or the set of served kinds changes, and
commit the result (nothing runs it automatically):

    python3 scripts/gen-typeinfo.py                   # writes control/src/registry/typeinfo.rs
    python3 scripts/gen-typeinfo.py --check           # exits 1 if the committed file is stale
    python3 scripts/gen-typeinfo.py --verify DEFS     # compares with upstream's OpenAPI

What it reads:
- the served kinds: every `group:` / `version:` / `kind:` triple of a `ResourceDef { .. }`
  in control/src/registry/*.rs, plus EXTRA_ROOTS below;
- from k8s-openapi 0.29 (`src/v1_33/` in the cargo registry), for each type reachable from
  those kinds: the struct's fields and their Rust types (`Option<..>`, `Vec<..>`,
  `BTreeMap<String, ..>`, `crate::..::Type`, scalars), the JSON name of each field (the
  Deserialize impl's `"jsonName" => Field::Key_rust_name` arms), and the list/map strategy
  of each field (the DeepMerge impl's `merge_strategies::list::{atomic,set,map}` and
  `merge_strategies::map::{atomic,granular}` calls; `list::map` carries its key
  closures `lhs.k == rhs.k`). Tuple structs and enums (Quantity, Time, MicroTime,
  IntOrString, RawExtension, FieldsV1) are scalar types.

What k8s-openapi does not carry, and so comes from the explicit lists below, each entry
citing the upstream Go struct tag / OpenAPI extension it restates:
- SMP_OVERRIDES: `patchStrategy` / `patchMergeKey` where they are not "list-map with keys
  => merge on the first key; anything else => no strategy";
- SSA_LISTS: the `+listType` / full `+listMapKey` set where k8s-openapi encoded the patch
  merge key instead (it prefers `x-kubernetes-patch-merge-key` when both are present);
- ATOMIC_STRUCTS: types marked `+structType=atomic` (`x-kubernetes-map-type: atomic` on
  the definition), which k8s-openapi merges field by field.

`--verify DEFS` takes upstream's OpenAPI definitions for the same release (a JSON file
with `definitions` or `$defs` keyed by `io.k8s....` names, e.g. api/openapi-spec/
swagger.json) and prints every difference between the generated table and upstream's
`x-kubernetes-list-type`, `-list-map-keys`, `-map-type`, `-patch-strategy` and
`-patch-merge-key`; it exits 1 on any difference.
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "control", "src", "registry", "typeinfo.rs")
REGISTRY = os.path.join(ROOT, "control", "src", "registry")

# Kinds served outside the registry's ResourceDefs: subresource bodies.
EXTRA_ROOTS = [
    ("autoscaling", "v1", "Scale"),  # <resource>/scale
    ("", "v1", "Binding"),  # pods/binding
]

# Upstream patch tags that differ from the default rule ("list::map => merge on the first
# key, else none"). Value: (strategy, merge key, retainKeys). Each comment quotes the
# upstream Go tag (k8s.io/api, release-1.33).
SMP_OVERRIDES = {
    # ObjectMeta.Finalizers `patchStrategy:"merge"` (+listType=set)
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "finalizers"): ("merge", None, False),
    # NodeSpec.PodCIDRs `patchStrategy:"merge"` (+listType=set)
    ("io.k8s.api.core.v1.NodeSpec", "podCIDRs"): ("merge", None, False),
    # PodSpec.Volumes `patchStrategy:"merge,retainKeys" patchMergeKey:"name"`
    ("io.k8s.api.core.v1.PodSpec", "volumes"): ("merge", "name", True),
    # PodSpec.ResourceClaims `patchStrategy:"merge,retainKeys" patchMergeKey:"name"`
    ("io.k8s.api.core.v1.PodSpec", "resourceClaims"): ("merge", "name", True),
    # PodStatus.ResourceClaimStatuses `patchStrategy:"merge,retainKeys" patchMergeKey:"name"`
    ("io.k8s.api.core.v1.PodStatus", "resourceClaimStatuses"): ("merge", "name", True),
    # DeploymentSpec.Strategy `patchStrategy:"retainKeys"`
    ("io.k8s.api.apps.v1.DeploymentSpec", "strategy"): ("retainKeys", None, True),
}

# Where the SMP default rule would say "merge" but upstream has no patch strategy: a
# listType=map list without patch tags is replaced by SMP.
SMP_NO_STRATEGY = {
    # ResourceRequirements.Claims: +listType=map +listMapKey=name, no patchStrategy
    ("io.k8s.api.core.v1.ResourceRequirements", "claims"),
    # ResourceStatus.Resources: +listType=map +listMapKey=resourceID, no patchStrategy
    ("io.k8s.api.core.v1.ResourceStatus", "resources"),
}

# The list type server-side apply uses, where k8s-openapi encoded the patch merge key
# instead (it prefers x-kubernetes-patch-merge-key over x-kubernetes-list-type/-map-keys).
SSA_LISTS = {
    # Container.Ports +listType=map +listMapKey=containerPort +listMapKey=protocol
    ("io.k8s.api.core.v1.Container", "ports"): ("map", ["containerPort", "protocol"]),
    # EphemeralContainer.Ports +listType=map +listMapKey=containerPort +listMapKey=protocol
    ("io.k8s.api.core.v1.EphemeralContainer", "ports"): ("map", ["containerPort", "protocol"]),
    # ServiceSpec.Ports +listType=map +listMapKey=port +listMapKey=protocol
    ("io.k8s.api.core.v1.ServiceSpec", "ports"): ("map", ["port", "protocol"]),
    # PodSpec.TopologySpreadConstraints +listType=map +listMapKey=topologyKey
    # +listMapKey=whenUnsatisfiable
    ("io.k8s.api.core.v1.PodSpec", "topologySpreadConstraints"): (
        "map",
        ["topologyKey", "whenUnsatisfiable"],
    ),
    # PodStatus.HostIPs +listType=atomic `patchStrategy:"merge" patchMergeKey:"ip"`
    ("io.k8s.api.core.v1.PodStatus", "hostIPs"): ("atomic", []),
}

# Types marked +structType=atomic upstream (x-kubernetes-map-type: atomic on the
# definition): server-side apply owns and replaces them as a unit; SMP still merges them.
ATOMIC_STRUCTS = {
    "io.k8s.api.core.v1.ConfigMapKeySelector",
    "io.k8s.api.core.v1.EndpointAddress",
    "io.k8s.api.core.v1.EndpointPort",
    "io.k8s.api.core.v1.LocalObjectReference",
    "io.k8s.api.core.v1.NodeSelector",
    "io.k8s.api.core.v1.NodeSelectorTerm",
    "io.k8s.api.core.v1.ObjectFieldSelector",
    "io.k8s.api.core.v1.ObjectReference",
    "io.k8s.api.core.v1.ResourceFieldSelector",
    "io.k8s.api.core.v1.SecretKeySelector",
    "io.k8s.api.core.v1.TypedLocalObjectReference",
    "io.k8s.api.discovery.v1.EndpointPort",
    "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
    "io.k8s.apimachinery.pkg.apis.meta.v1.OwnerReference",
}

SCALAR_RUST = {
    "std::string::String",
    "i32",
    "i64",
    "f64",
    "bool",
    "crate::ByteString",
    "crate::serde_json::Value",
}


def cargo_src():
    home = os.path.expanduser("~/.cargo/registry/src")
    hits = sorted(glob.glob(os.path.join(home, "*", "k8s-openapi-0.29.0", "src", "v1_33")))
    if not hits:
        sys.exit("k8s-openapi 0.29.0 not found under ~/.cargo/registry/src (run cargo fetch)")
    return hits[0]


class RustType:
    """One parsed k8s-openapi type: a struct with named fields, or a scalar."""

    def __init__(self, definition, rust_path):
        self.definition = definition
        self.rust_path = rust_path
        self.scalar = True
        self.fields = {}  # rust name -> rust type string
        self.json = {}  # rust name -> json name
        self.merge = {}  # rust name -> ("atomic"|"set"|"map"|"granular"|"matomic"|"merge", keys)
        self.resource = None  # (group, version, kind)


def parse_file(path, rust_path):
    text = open(path, encoding="utf-8").read()
    m = re.search(r"^// Generated from definition (\S+)", text, re.M)
    if not m:
        return None
    t = RustType(m.group(1), rust_path)
    name = rust_path.rsplit("::", 1)[1]
    sm = re.search(r"^pub struct " + name + r" \{\n(.*?)^\}", text, re.M | re.S)
    if sm:
        t.scalar = False
        for fm in re.finditer(r"^    pub (\w+): (.+),$", sm.group(1), re.M):
            t.fields[fm.group(1)] = fm.group(2)
        for jm in re.finditer(r'^\s*"([^"]+)" => Field::Key_(\w+),$', text, re.M):
            t.json[jm.group(2)] = jm.group(1)
        dm = re.search(r"impl crate::DeepMerge for " + name + r" \{(.*?)\n\}\n", text, re.S)
        body = dm.group(1) if dm else ""
        for lm in re.finditer(
            r"merge_strategies::list::map\(\s*&mut self\.(\w+),\s*other\.\w+,\s*&\[(.*?)\],",
            body,
            re.S,
        ):
            keys = re.findall(r"lhs\.(\w+) == rhs\.\w+", lm.group(2))
            t.merge[lm.group(1)] = ("map", keys)
        for kind, pat in (
            ("atomic", r"list::atomic\(&mut self\.(\w+)"),
            ("set", r"list::set\(&mut self\.(\w+)"),
            ("granular", r"map::granular\(&mut self\.(\w+)"),
            ("matomic", r"map::atomic\(&mut self\.(\w+)"),
            ("merge", r"DeepMerge::merge_from\(&mut self\.(\w+)"),
        ):
            for fm in re.finditer(pat, body):
                t.merge[fm.group(1)] = (kind, [])
    rm = re.search(
        r'impl crate::Resource for \w+ \{.*?const GROUP: &\'static str = "([^"]*)";'
        r'.*?const KIND: &\'static str = "([^"]*)";.*?const VERSION: &\'static str = "([^"]*)";',
        text,
        re.S,
    )
    if rm:
        t.resource = (rm.group(1), rm.group(3), rm.group(2))
    return t


def load_types(src):
    types = {}
    for path in glob.glob(os.path.join(src, "**", "*.rs"), recursive=True):
        rel = os.path.relpath(path, src)
        if os.path.basename(rel) in ("mod.rs", "list.rs"):
            continue
        mod = rel[: -len(".rs")].split(os.sep)
        # The file holds the type named after it in CamelCase; read the name from the file.
        text_head = open(path, encoding="utf-8").read()
        nm = re.search(r"^pub (?:struct|enum) (\w+)", text_head, re.M)
        if not nm:
            continue
        rust_path = "crate::" + "::".join(mod[:-1]) + "::" + nm.group(1)
        t = parse_file(path, rust_path)
        if t:
            types[rust_path] = t
    return types


def served_roots():
    roots = []
    for path in sorted(glob.glob(os.path.join(REGISTRY, "*.rs"))):
        text = open(path, encoding="utf-8").read()
        for m in re.finditer(r"ResourceDef \{(.*?)\n\s*\}", text, re.S):
            body = m.group(1)
            g = re.search(r'\bgroup: "([^"]*)"', body)
            v = re.search(r'\bversion: "([^"]*)"', body)
            k = re.search(r'\bkind: "([^"]*)"', body)
            if g and v and k:
                roots.append((g.group(1), v.group(1), k.group(1)))
    for r in EXTRA_ROOTS:
        if r not in roots:
            roots.append(r)
    return roots


def strip_option(ty):
    m = re.fullmatch(r"Option<(.*)>", ty)
    return m.group(1) if m else ty


def classify(ty, types):
    """Returns ("scalar",) | ("object", path) | ("list", elem) | ("map", elem) where elem is
    ("scalar",) or ("object", path)."""
    ty = strip_option(ty)
    m = re.fullmatch(r"std::vec::Vec<(.*)>", ty)
    if m:
        return ("list", classify(m.group(1), types))
    m = re.fullmatch(r"std::collections::BTreeMap<std::string::String, (.*)>", ty)
    if m:
        return ("map", classify(m.group(1), types))
    if ty in SCALAR_RUST:
        return ("scalar",)
    if ty in types:
        return ("scalar",) if types[ty].scalar else ("object", ty)
    raise SystemExit(f"unknown field type {ty!r}")


def build(src):
    types = load_types(src)
    by_resource = {t.resource: p for p, t in types.items() if t.resource}
    roots = []
    for gvk in served_roots():
        if gvk not in by_resource:
            sys.exit(f"no k8s-openapi type for served kind {gvk}")
        roots.append((gvk, by_resource[gvk]))

    # Breadth-first from the roots, in a stable order, so the table diff stays readable.
    order, seen, queue = [], set(), [p for _, p in roots]
    while queue:
        p = queue.pop(0)
        if p in seen:
            continue
        seen.add(p)
        order.append(p)
        t = types[p]
        for rust_name in sorted(t.fields):
            shape = classify(t.fields[rust_name], types)
            inner = shape[1] if shape[0] in ("list", "map") else shape
            if inner[0] == "object" and inner[1] not in seen:
                queue.append(inner[1])
    order.sort(key=lambda p: types[p].definition)
    index = {p: i for i, p in enumerate(order)}

    table = []
    for p in order:
        t = types[p]
        fields = []
        if t.resource:
            for name in ("apiVersion", "kind"):
                fields.append({"name": name, "shape": ("scalar",), "smp": ("none", None, False)})
        for rust_name, rust_ty in t.fields.items():
            json_name = t.json.get(rust_name)
            if json_name is None:
                sys.exit(f"{t.definition}.{rust_name}: no JSON name found")
            shape = classify(rust_ty, types)
            strat, keys = t.merge.get(rust_name, ("merge", []))
            f = {"name": json_name, "shape": shape}
            elem = shape[1] if shape[0] in ("list", "map") else None
            if shape[0] == "list":
                if strat == "map":
                    key_json = [types[elem[1]].json[k] for k in keys]
                    f["list"] = ("map", key_json)
                elif strat == "set":
                    f["list"] = ("set", [])
                else:
                    f["list"] = ("atomic", [])
            if shape[0] == "map":
                f["map"] = "atomic" if strat == "matomic" else "granular"
            # SMP: list-map => merge on its first key; anything else => no strategy.
            key = (t.definition, json_name)
            smp = ("none", None, False)
            if f.get("list", ("",))[0] == "map" and key not in SMP_NO_STRATEGY:
                smp = ("merge", f["list"][1][0], False)
            smp = SMP_OVERRIDES.get(key, smp)
            f["smp"] = smp
            if key in SSA_LISTS:
                lk, keys = SSA_LISTS[key]
                if f.get("list", ("",))[0] != "map" or (lk == "map" and f["list"][1][0] != keys[0]):
                    sys.exit(f"SSA_LISTS entry {key} does not refine k8s-openapi's list-map")
                f["list"] = (lk, list(keys))
            fields.append(f)
        fields.sort(key=lambda f: f["name"])
        atomic = t.scalar or t.definition in ATOMIC_STRUCTS
        table.append({"def": t.definition, "scalar": t.scalar, "atomic": atomic, "fields": fields})
    for d in ATOMIC_STRUCTS:
        if not any(e["def"] == d for e in table):
            sys.exit(f"ATOMIC_STRUCTS entry {d} is not a reachable type")
    for key in list(SMP_OVERRIDES) + list(SSA_LISTS) + list(SMP_NO_STRATEGY):
        if not any(e["def"] == key[0] and any(f["name"] == key[1] for f in e["fields"]) for e in table):
            sys.exit(f"override {key} names no field of a reachable type")
    return roots, table, index


def rust_str(s):
    return json.dumps(s)


def render(roots, table, index):
    out = []
    w = out.append
    w("// generated by scripts/gen-typeinfo.py from k8s-openapi 0.29 v1_33; do not edit")
    w("//! The field table of every type reachable from the kinds wasmkube serves; read it")
    w("//! through [`super::schema`].")
    w("")
    w("use super::schema::{Elem, FieldDef as F, ListKind, MapKind, TypeDef};")
    w("")

    def elem(e):
        return "Elem::Scalar" if e[0] == "scalar" else f"Elem::Object({index[e[1]]})"

    w("/// Every type, sorted by definition name; `Elem::Object(i)` indexes this table.")
    w(f"pub(super) static TYPES: [TypeDef; {len(table)}] = [")
    for e in table:
        ctor = "TypeDef::atomic" if e["atomic"] else "TypeDef::granular"
        w(f"    {ctor}(")
        w(f"        {rust_str(e['def'])},")
        w("        &[")
        for f in e["fields"]:
            s = f["shape"]
            n = rust_str(f["name"])
            if s[0] == "scalar":
                expr = f"F::scalar({n})"
            elif s[0] == "object":
                expr = f"F::object({n}, {index[s[1]]})"
            elif s[0] == "map":
                kind = "MapKind::Atomic" if f["map"] == "atomic" else "MapKind::Granular"
                expr = f"F::map({n}, {elem(s[1])}, {kind})"
            else:
                lk, keys = f["list"]
                if lk == "map":
                    kind = "ListKind::Map(&[" + ", ".join(rust_str(k) for k in keys) + "])"
                else:
                    kind = "ListKind::Set" if lk == "set" else "ListKind::Atomic"
                expr = f"F::list({n}, {elem(s[1])}, {kind})"
            strat, key, retain = f["smp"]
            if strat == "merge":
                expr += f".merge({rust_str(key)})" if key else ".merge_set()"
            if retain:
                expr += ".retain_keys()"
            w(f"            {expr},")
        w("        ],")
        w("    ),")
    w("];")
    w("")
    w("/// The served kinds: (group, version, kind, index into [`TYPES`]).")
    w(f"pub(super) static ROOTS: [(&str, &str, &str, u16); {len(roots)}] = [")
    for (g, v, k), p in sorted(roots):
        w(f"    ({rust_str(g)}, {rust_str(v)}, {rust_str(k)}, {index[p]}),")
    w("];")
    return "\n".join(out) + "\n"


def rustfmt(text):
    """Formats like `cargo fmt` would, so that the committed file is stable under it."""
    try:
        r = subprocess.run(
            ["rustfmt", "--edition", "2021", "--emit", "stdout", "--quiet"],
            input=text,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"rustfmt failed: {e}")
    return r.stdout


def verify(table, defs_path):
    """Prints each difference from upstream's OpenAPI extensions; returns their count."""
    doc = json.load(open(defs_path, encoding="utf-8"))
    defs = doc.get("definitions") or doc.get("$defs") or doc
    problems = 0

    def report(msg):
        nonlocal problems
        problems += 1
        print(msg)

    for e in table:
        d = defs.get(e["def"])
        if d is None:
            report(f"{e['def']}: not in upstream definitions")
            continue
        if not e["scalar"]:
            up_atomic = d.get("x-kubernetes-map-type") == "atomic"
            if up_atomic != e["atomic"]:
                report(f"{e['def']}: atomic={e['atomic']} upstream={up_atomic}")
        props = d.get("properties", {})
        for f in e["fields"]:
            p = props.get(f["name"])
            if p is None:
                if f["name"] not in ("apiVersion", "kind"):
                    report(f"{e['def']}.{f['name']}: not upstream")
                continue
            where = f"{e['def']}.{f['name']}"
            if "list" in f:
                lk, keys = f["list"]
                up_lt = p.get("x-kubernetes-list-type", "atomic")
                up_keys = p.get("x-kubernetes-list-map-keys", [])
                if lk != up_lt or (lk == "map" and keys != up_keys):
                    report(f"{where}: list {lk}{keys} upstream {up_lt}{up_keys}")
            if "map" in f:
                up_mt = p.get("x-kubernetes-map-type", "granular")
                if f["map"] != up_mt:
                    report(f"{where}: map {f['map']} upstream {up_mt}")
            strat, key, retain = f["smp"]
            up_ps = p.get("x-kubernetes-patch-strategy", "")
            up_parts = [s for s in up_ps.split(",") if s]
            mine = (["merge"] if strat == "merge" else []) + (["retainKeys"] if retain else [])
            if sorted(mine) != sorted(up_parts) or key != p.get("x-kubernetes-patch-merge-key"):
                report(
                    f"{where}: smp {mine} key {key} upstream {up_parts} "
                    f"key {p.get('x-kubernetes-patch-merge-key')}"
                )
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the committed file is stale")
    ap.add_argument("--verify", metavar="DEFS", help="compare with upstream OpenAPI definitions")
    args = ap.parse_args()
    roots, table, index = build(cargo_src())
    if args.verify:
        n = verify(table, args.verify)
        print(f"{n} difference(s) from upstream")
        sys.exit(1 if n else 0)
    text = rustfmt(render(roots, table, index))
    if args.check:
        current = open(OUT, encoding="utf-8").read() if os.path.exists(OUT) else ""
        if current != text:
            sys.exit(f"{OUT} is stale: run scripts/gen-typeinfo.py")
        return
    with open(OUT, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(f"wrote {OUT}: {len(table)} types, {len(roots)} roots")


if __name__ == "__main__":
    main()

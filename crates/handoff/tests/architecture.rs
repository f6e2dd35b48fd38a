//! The architecture's rules, checked on the source as rust-analyzer's tidy tests do: which crate
//! may depend on which (ARCHITECTURE.md's crate map), and no import cycle among the modules of
//! any crate. Run alone with `cargo test -p handoff --test architecture`.
//!
//! Cycles: at every level of a crate's module tree, the nodes are a module's own code and each
//! of its child modules (with everything below it); an edge is a path in one that names the
//! other (`crate::a::..`, `super::..`, `self::..`, or a child module's name), `use` or not. A
//! `pub use` in a parent is an edge from the parent too. `KNOWN_CYCLES` lists the cycles the
//! code has today, to be taken apart (issue 24); a cycle not listed fails, and so does a listed
//! one that is gone, so that the list only ever shrinks to empty.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/handoff sits two levels below the workspace root")
        .to_path_buf()
}

// ----- crate dependencies ------------------------------------------------------------------

/// What each crate must not depend on (normal dependencies; tests and benches may use more).
/// `None` in `only` means no allow-list; `Some` lists every crate it may depend on.
struct CrateRule {
    name: &'static str,
    only: Option<&'static [&'static str]>,
    never: &'static [&'static str],
    why: &'static str,
}

const CRATE_RULES: &[CrateRule] = &[
    CrateRule {
        name: "handoff-core",
        only: Some(&["thiserror", "foldhash", "smallvec", "itoa"]),
        never: &[],
        why: "the domain is pure and synchronous: no serde, no tokio, no I/O, no other handoff crate",
    },
    CrateRule {
        name: "handoff-protocol",
        only: Some(&["serde", "serde_json", "utoipa"]),
        never: &[],
        why: "the wire contract is types only: no behaviour, no runtime, no other handoff crate",
    },
    CrateRule {
        name: "handoff-store",
        only: None,
        never: &[
            "handoff-core",
            "handoff-protocol",
            "handoff-api",
            "handoff-client",
            "axum",
            "serde",
            "serde_json",
            "reqwest",
        ],
        why: "the store knows nothing of HTTP, JSON or the domain: an event is a seq, a type, a subject and opaque text",
    },
    CrateRule {
        name: "handoff-client",
        only: None,
        never: &[
            "handoff-core",
            "handoff-store",
            "handoff-api",
            "axum",
            "rusqlite",
            "tokio-postgres",
        ],
        why: "the client library speaks the wire contract only, as any other client would",
    },
    CrateRule {
        name: "handoff-api",
        only: None,
        never: &["handoff", "handoff-client", "redis", "hdrhistogram", "indicatif"],
        why: "the server's library does not depend on the binary, the client or the bench's tools",
    },
    CrateRule {
        name: "handoff",
        only: None,
        never: &["handoff-bench", "redis", "hdrhistogram", "indicatif"],
        why: "the server binary links none of the bench: `handoff bench` runs the handoff-bench executable",
    },
];

/// The names in `[dependencies]` (and `[dependencies.NAME]` tables) of a Cargo.toml.
fn normal_dependencies(manifest: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut in_dependencies = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
            if let Some(name) = line
                .strip_prefix("[dependencies.")
                .and_then(|rest| rest.strip_suffix(']'))
            {
                names.insert(name.trim().to_owned());
            }
            continue;
        }
        if !in_dependencies || line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            let name = key.split('.').next().unwrap_or(key).trim_matches('"');
            names.insert(name.to_owned());
        }
    }
    names
}

fn crate_dependency_violations(root: &Path) -> Vec<String> {
    let mut violations = Vec::new();
    for rule in CRATE_RULES {
        let manifest_path = root.join("crates").join(rule.name).join("Cargo.toml");
        let manifest = fs::read_to_string(&manifest_path)
            .unwrap_or_else(|error| panic!("{}: {error}", manifest_path.display()));
        for dependency in normal_dependencies(&manifest) {
            let outside_allow_list = rule
                .only
                .is_some_and(|only| !only.contains(&dependency.as_str()));
            if outside_allow_list || rule.never.contains(&dependency.as_str()) {
                violations.push(format!(
                    "{} depends on {dependency}: {}",
                    rule.name, rule.why
                ));
            }
        }
    }
    violations
}

#[test]
fn crates_depend_only_along_the_allowed_arrows() {
    let violations = crate_dependency_violations(&workspace_root());
    assert!(
        violations.is_empty(),
        "forbidden dependencies (ARCHITECTURE.md, crate map):\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_dependency_rules_read_every_form_of_dependency() {
    let manifest = r#"
[package]
name = "x"

[dependencies]
serde.workspace = true
tokio = { workspace = true }
"quoted" = "1"
# commented = "1"

[dependencies.table-form]
version = "1"

[dev-dependencies]
proptest = "1"
"#;
    let names: Vec<String> = normal_dependencies(manifest).into_iter().collect();
    assert_eq!(names, ["quoted", "serde", "table-form", "tokio"]);
}

// ----- module cycles -----------------------------------------------------------------------

/// The cycles the code has today, each as `crate: parent: members` with the members sorted
/// (`self` is the parent's own code). Issue 24 takes them apart; remove a line as its cycle
/// goes.
const KNOWN_CYCLES: &[&str] = &[
    "handoff-api: crate root: auth cluster connections engine integrations json openapi requests routes self stats_feed uc web",
    "handoff-api: integrations: connector_registry connectors self webhooks",
    "handoff-api: routes: agents connectors events interactions keys queues self session stream webhooks",
    "handoff-api: uc: csta self sip xmpp",
    "handoff-api: uc::csta: self session",
    "handoff-api: uc::xmpp: client self",
    "handoff-bench: crate root: baselines self",
    "handoff-store: crate root: postgres self sqlite",
    "handoff: crate root: cluster_node serve",
];

/// One source file as a module: its path from the crate root (empty for lib.rs/main.rs).
struct SourceModule {
    path: Vec<String>,
    text: String,
}

fn crate_modules(src: &Path) -> Vec<SourceModule> {
    let mut files = Vec::new();
    collect_rust_files(src, &mut files);
    files
        .into_iter()
        .filter_map(|file| {
            let relative = file.strip_prefix(src).ok()?;
            let mut parts: Vec<String> = relative
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            let last = parts.pop()?;
            let stem = last.strip_suffix(".rs")?.to_owned();
            // A binary's own `src/bin/` or a file that is not a module of the tree (a
            // build script) is not part of it.
            if parts.first().is_some_and(|first| first == "bin") {
                return None;
            }
            if !(parts.is_empty() && (stem == "lib" || stem == "main")) && stem != "mod" {
                parts.push(stem);
            }
            let text = strip_comments_and_strings(&fs::read_to_string(&file).ok()?);
            Some(SourceModule {
                path: parts,
                text: inline_modules_as_self(&text),
            })
        })
        .collect()
}

fn collect_rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The text with comments removed and string and character literals emptied, so that a path
/// in a doc comment or a message is not read as a reference.
fn strip_comments_and_strings(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').map_or(bytes.len(), |n| i + n);
            i = end;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(bytes.len(), |n| i + n + 2);
            i = end;
        } else if rest.starts_with("r#\"") || rest.starts_with("r\"") {
            let hashes = rest[1..].chars().take_while(|&c| c == '#').count();
            let closing = format!("\"{}", "#".repeat(hashes));
            let body_start = i + 2 + hashes;
            let end = text[body_start..]
                .find(&closing)
                .map_or(bytes.len(), |n| body_start + n + closing.len());
            out.push_str("\"\"");
            i = end;
        } else if bytes[i] == b'"' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'"' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            i = (j + 1).min(bytes.len());
        } else if bytes[i] == b'\'' && is_char_literal(&bytes[i..]) {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'\'' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            out.push_str("' '");
            i = (j + 1).min(bytes.len());
        } else {
            let c = rest.chars().next().expect("not at the end");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// A module written inline in its file (`mod tests { use super::*; }`) is read as part of the
/// file's module: its `super::` names the file's module, so it becomes `self::`.
fn inline_modules_as_self(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find_inline_module(rest) {
        let open = start + rest[start..].find('{').expect("found with its brace");
        let close = closing_brace(rest, open);
        out.push_str(&rest[..open]);
        out.push_str(&rest[open..close].replace("super::", "self::"));
        rest = &rest[close..];
    }
    out.push_str(rest);
    out
}

/// Where `mod NAME {` starts, not `mod NAME;`.
fn find_inline_module(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = text[from..].find("mod ") {
        let at = from + found;
        let before_ok = at == 0 || !text.as_bytes()[at - 1].is_ascii_alphanumeric();
        let after = text[at + 4..].trim_start();
        let name_len = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if before_ok && name_len > 0 && after[name_len..].trim_start().starts_with('{') {
            return Some(at);
        }
        from = at + 4;
    }
    None
}

fn closing_brace(text: &str, open: usize) -> usize {
    let mut depth = 0usize;
    for (index, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return open + index + 1;
                }
            }
            _ => {}
        }
    }
    text.len()
}

/// `'a'` or `'\n'`, not a lifetime `'a`.
fn is_char_literal(bytes: &[u8]) -> bool {
    match bytes.get(1) {
        Some(b'\\') => true,
        Some(_) => {
            let next = std::str::from_utf8(&bytes[1..bytes.len().min(6)])
                .ok()
                .or_else(|| std::str::from_utf8(&bytes[1..2]).ok())
                .and_then(|s| s.chars().next());
            next.is_some_and(|c| bytes.get(1 + c.len_utf8()) == Some(&b'\''))
        }
        None => false,
    }
}

/// Every path the code names: the `use` trees expanded, and `a::b` sequences elsewhere.
fn named_paths(text: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let tokens = tokenize(text);
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i] == "use" {
            let end = tokens[i..]
                .iter()
                .position(|token| token == ";")
                .map_or(tokens.len(), |n| i + n);
            expand_use_tree(&tokens[i + 1..end], &[], &mut paths);
            i = end;
            continue;
        }
        if is_identifier(&tokens[i]) && tokens.get(i + 1).is_some_and(|t| t == "::") {
            let mut path = vec![tokens[i].clone()];
            let mut j = i + 1;
            while tokens.get(j).is_some_and(|t| t == "::")
                && tokens.get(j + 1).is_some_and(|t| is_identifier(t))
            {
                path.push(tokens[j + 1].clone());
                j += 2;
            }
            // Not the tail of a longer path (`x::a::b` was read from `x`).
            let continues = i >= 1 && tokens[i - 1] == "::";
            if !continues {
                paths.push(path);
            }
            i = j;
            continue;
        }
        i += 1;
    }
    paths
}

fn is_identifier(token: &str) -> bool {
    token
        .chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            tokens.push("::".to_owned());
            i += 2;
        } else if c.is_whitespace() {
            i += 1;
        } else {
            tokens.push(c.to_string());
            i += 1;
        }
    }
    tokens
}

/// `a::{b, c::{d, e}}` as `a::b`, `a::c::d`, `a::c::e` (`self` in a group is its prefix).
fn expand_use_tree(tokens: &[String], prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut depth = 0usize;
    let mut start = 0;
    let mut items = Vec::new();
    for (index, token) in tokens.iter().enumerate() {
        match token.as_str() {
            "{" => depth += 1,
            "}" => depth = depth.saturating_sub(1),
            "," if depth == 0 => {
                items.push(&tokens[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    items.push(&tokens[start..]);
    for item in items {
        let mut path = prefix.to_vec();
        let mut index = 0;
        while index < item.len() {
            let token = &item[index];
            if token == "{" {
                let close = matching_brace(item, index);
                expand_use_tree(&item[index + 1..close], &path, out);
                path.clear();
                break;
            } else if token == "as" {
                break;
            } else if token == "::" || token == "pub" || token == "(" || token == ")" {
                // `pub(crate) use` leaves its visibility in front.
            } else if token == "self" && index > 0 {
                // `a::{self}` is `a` itself.
            } else if is_identifier(token) || token == "*" {
                path.push(token.clone());
            }
            index += 1;
        }
        // `a::{self}` names `a` itself, as long a path as its prefix.
        let names_something = path.len() > prefix.len() || item.iter().any(|t| t == "self");
        if !path.is_empty() && names_something {
            out.push(path);
        }
    }
}

fn matching_brace(tokens: &[String], open: usize) -> usize {
    let mut depth = 0usize;
    for (index, token) in tokens.iter().enumerate().skip(open) {
        match token.as_str() {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if depth == 0 {
                    return index;
                }
            }
            _ => {}
        }
    }
    tokens.len()
}

/// Names a module re-exports (`pub use error::ApiError`): by the re-exporting module and the
/// name, the module that defines it.
type Reexports = BTreeMap<(Vec<String>, String), Vec<String>>;

/// The module a path names, resolved from `from`: the longest prefix that is a module of the
/// crate; a name that module re-exports resolves to the module that defines it.
fn resolve(
    path: &[String],
    from: &[String],
    modules: &BTreeSet<Vec<String>>,
    reexports: &Reexports,
) -> Option<Vec<String>> {
    let (mut base, rest): (Vec<String>, &[String]) = match path.first()?.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "super" => {
            let mut base = from.to_vec();
            let mut rest = path;
            while rest.first().is_some_and(|p| p == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
            (base, rest)
        }
        "self" => (from.to_vec(), &path[1..]),
        first => {
            // A child module named directly from its parent.
            let mut child = from.to_vec();
            child.push(first.to_owned());
            if !modules.contains(&child) {
                return None;
            }
            (from.to_vec(), path)
        }
    };
    for segment in rest {
        let mut deeper = base.clone();
        deeper.push(segment.clone());
        if modules.contains(&deeper) {
            base = deeper;
        } else if let Some(defining) = reexports.get(&(base.clone(), segment.clone())) {
            return Some(defining.clone());
        } else {
            break;
        }
    }
    Some(base)
}

/// What each module re-exports with `pub use` (or `pub(crate) use`).
fn module_reexports(modules: &[SourceModule], known: &BTreeSet<Vec<String>>) -> Reexports {
    let mut names = Reexports::new();
    for module in modules {
        let tokens = tokenize(&module.text);
        for (index, token) in tokens.iter().enumerate() {
            let public = index >= 1 && (tokens[index - 1] == "pub" || tokens[index - 1] == ")");
            if token != "use" || !public {
                continue;
            }
            let end = tokens[index..]
                .iter()
                .position(|t| t == ";")
                .map_or(tokens.len(), |n| index + n);
            let mut paths = Vec::new();
            expand_use_tree(&tokens[index + 1..end], &[], &mut paths);
            for path in paths {
                let Some(name) = path.last().cloned() else {
                    continue;
                };
                let Some(defining) = resolve(&path, &module.path, known, &Reexports::new()) else {
                    continue;
                };
                if defining != module.path {
                    names.insert((module.path.clone(), name), defining);
                }
            }
        }
    }
    names
}

/// The module-to-module edges of a crate, from each file's module to each module it names.
fn module_edges(modules: &[SourceModule]) -> BTreeSet<(Vec<String>, Vec<String>)> {
    let known: BTreeSet<Vec<String>> = modules.iter().map(|m| m.path.clone()).collect();
    let reexports = module_reexports(modules, &known);
    let mut edges = BTreeSet::new();
    for module in modules {
        for path in named_paths(&module.text) {
            if let Some(target) = resolve(&path, &module.path, &known, &reexports) {
                if target != module.path {
                    edges.insert((module.path.clone(), target));
                }
            }
        }
    }
    edges
}

/// The cycles at each level of the tree: for every parent, its own code (`self`) and its
/// children, each child standing for everything below it.
fn module_cycles(crate_name: &str, modules: &[SourceModule]) -> BTreeSet<String> {
    let edges = module_edges(modules);
    let parents: BTreeSet<Vec<String>> = modules
        .iter()
        .filter(|m| !m.path.is_empty())
        .map(|m| m.path[..m.path.len() - 1].to_vec())
        .collect();
    let mut cycles = BTreeSet::new();
    for parent in parents {
        let node_of = |module: &Vec<String>| -> Option<String> {
            if !module.starts_with(&parent) {
                return None;
            }
            Some(
                module
                    .get(parent.len())
                    .cloned()
                    .unwrap_or_else(|| "self".to_owned()),
            )
        };
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in &edges {
            if let (Some(a), Some(b)) = (node_of(from), node_of(to)) {
                if a != b {
                    graph.entry(a).or_default().insert(b);
                }
            }
        }
        for component in strongly_connected(&graph) {
            if component.len() > 1 {
                let place = if parent.is_empty() {
                    "crate root".to_owned()
                } else {
                    parent.join("::")
                };
                let members: Vec<String> = component.into_iter().collect();
                cycles.insert(format!("{crate_name}: {place}: {}", members.join(" ")));
            }
        }
    }
    cycles
}

/// Tarjan's strongly connected components.
fn strongly_connected(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        components: Vec<BTreeSet<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, node: &'a str) {
            self.index.insert(node, self.next);
            self.low.insert(node, self.next);
            self.next += 1;
            self.stack.push(node);
            self.on_stack.insert(node);
            if let Some(targets) = self.graph.get(node) {
                for target in targets {
                    let target = target.as_str();
                    if !self.index.contains_key(target) {
                        self.visit(target);
                        let low = self.low[node].min(self.low[target]);
                        self.low.insert(node, low);
                    } else if self.on_stack.contains(target) {
                        let low = self.low[node].min(self.index[target]);
                        self.low.insert(node, low);
                    }
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = BTreeSet::new();
                while let Some(member) = self.stack.pop() {
                    self.on_stack.remove(member);
                    component.insert(member.to_owned());
                    if member == node {
                        break;
                    }
                }
                self.components.push(component);
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        components: Vec::new(),
    };
    let nodes: BTreeSet<&str> = graph
        .iter()
        .flat_map(|(from, to)| std::iter::once(from.as_str()).chain(to.iter().map(String::as_str)))
        .collect();
    for node in nodes {
        if !walk.index.contains_key(node) {
            walk.visit(node);
        }
    }
    walk.components
}

fn workspace_cycles(root: &Path) -> BTreeSet<String> {
    let mut cycles = BTreeSet::new();
    let Ok(entries) = fs::read_dir(root.join("crates")) else {
        return cycles;
    };
    let mut crates: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
    crates.sort();
    for crate_dir in crates {
        let src = crate_dir.join("src");
        if !src.is_dir() {
            continue;
        }
        let name = crate_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        cycles.extend(module_cycles(&name, &crate_modules(&src)));
    }
    cycles
}

#[test]
fn no_import_cycle_among_the_modules_of_any_crate_beyond_the_known_ones() {
    let found = workspace_cycles(&workspace_root());
    let known: BTreeSet<String> = KNOWN_CYCLES.iter().map(|c| c.to_string()).collect();
    let new: Vec<&String> = found.difference(&known).collect();
    let gone: Vec<&String> = known.difference(&found).collect();
    assert!(
        new.is_empty() && gone.is_empty(),
        "module cycles differ from KNOWN_CYCLES.\nnew (take them apart):\n{}\ngone or changed \
         (update KNOWN_CYCLES):\n{}\nall cycles now:\n{}",
        lines(&new),
        lines(&gone),
        lines(&found.iter().collect::<Vec<_>>()),
    );
}

fn lines(items: &[&String]) -> String {
    items
        .iter()
        .map(|item| format!("    \"{item}\","))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_cycle_is_found_through_use_trees_super_and_parent_code() {
    let module = |path: &[&str], text: &str| SourceModule {
        path: path.iter().map(|p| p.to_string()).collect(),
        text: strip_comments_and_strings(text),
    };
    let modules = vec![
        module(&[], "mod a; mod b; mod c; pub use c::Thing;"),
        module(&["a"], "use crate::{b::{self, x}, Thing};"),
        module(&["b"], "// crate::a::nothing\nfn f() { super::a::g(); }"),
        module(&["c"], "pub struct Thing; fn g() { let s = \"crate::a\"; }"),
        module(&["c", "d"], "use super::e::Y;"),
        module(&["c", "e"], "fn h() { super::d::z(); }"),
    ];
    let cycles = module_cycles("x", &modules);
    let expected: BTreeSet<String> = ["x: c: d e", "x: crate root: a b"]
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(cycles, expected);
}

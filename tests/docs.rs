//! The repository stands alone: every relative link in its Markdown resolves inside a clone,
//! and no document points outside the repository, in a link or in its text (a clone has
//! nothing beside it).

use std::path::{Path, PathBuf};

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if p.is_dir() {
            if !name.starts_with('.') && name != "target" && name != "opof-report" {
                markdown_files(&p, out);
            }
        } else if name.ends_with(".md") {
            out.push(p);
        }
    }
}

/// The targets of `[text](target)` links in `text`.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].trim().to_string());
        }
    }
    out
}

/// Relative paths written in `text` (in links, code spans or prose) that start by going up a
/// folder: `../x/y.md`.
fn upward_paths(text: &str) -> Vec<&str> {
    let is_path = |c: char| c.is_ascii_alphanumeric() || "._/-".contains(c);
    let mut out = Vec::new();
    for (i, _) in text.match_indices("../") {
        // Only where a path starts: not in the middle of `a/../b` or of a longer word.
        if text[..i].chars().next_back().is_some_and(|c| is_path(c) && c != '/') {
            continue;
        }
        if text[..i].ends_with('/') {
            continue;
        }
        let end = text[i..].find(|c: char| !is_path(c)).map_or(text.len(), |e| i + e);
        out.push(&text[i..end]);
    }
    out
}

/// Whether `path`, read from the folder `from` (relative to the repository's root), leaves the
/// repository. Worked out on the names alone: what is outside a clone does not exist in it.
fn leaves_repository(from: &Path, path: &str) -> bool {
    let mut depth = from.components().count() as i64;
    for part in path.split('/') {
        match part {
            ".." => depth -= 1,
            "" | "." => {}
            _ => depth += 1,
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

#[test]
fn every_relative_link_in_the_markdown_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    markdown_files(root, &mut files);
    assert!(files.len() >= 5, "found only {files:?}");
    let mut broken = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let rel = f.strip_prefix(root).unwrap().display().to_string();
        let dir = f.parent().unwrap().strip_prefix(root).unwrap();
        for p in upward_paths(&text) {
            if leaves_repository(dir, p) {
                broken.push(format!("{rel}: mentions {p}, outside the repository (a clone does not have it)"));
            }
        }
        for l in links(&text) {
            if l.contains("://") || l.starts_with('#') || l.starts_with("mailto:") || l.is_empty() {
                continue;
            }
            let path = l.split('#').next().unwrap().replace("%20", " ");
            let target = f.parent().unwrap().join(&path);
            if !target.exists() {
                broken.push(format!("{rel}: ({l}) does not resolve"));
            } else if !target.canonicalize().unwrap().starts_with(root.canonicalize().unwrap()) {
                broken.push(format!("{rel}: ({l}) points outside the repository"));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn paths_that_leave_the_repository_are_found() {
    let text = "see `../../elsewhere/notes.md`, [up](../README.md) and a/../b, not x../y";
    assert_eq!(upward_paths(text), ["../../elsewhere/notes.md", "../README.md"]);
    let docs = Path::new("docs");
    assert!(leaves_repository(docs, "../../elsewhere/notes.md"));
    assert!(!leaves_repository(docs, "../README.md"));
    assert!(leaves_repository(Path::new(""), "../README.md"));
    assert!(!leaves_repository(Path::new("a/b"), "../../c/../d.md"));
}

#[test]
fn the_link_reader_finds_links() {
    assert_eq!(links("see [a](docs/A.md#x) and [b](https://e.org)."), ["docs/A.md#x", "https://e.org"]);
}

//! The repository stands alone: every relative link in its Markdown resolves inside a clone,
//! and no document points outside the repository (a clone has nothing beside it).

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
        if text.contains("../shared") {
            broken.push(format!("{rel}: mentions ../shared, which a clone does not have"));
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
fn the_link_reader_finds_links() {
    assert_eq!(links("see [a](docs/A.md#x) and [b](https://e.org)."), ["docs/A.md#x", "https://e.org"]);
}

//! Must show 9: completions/ and man/ are exactly what the clap definition
//! generates. `BALCTL_BLESS=1 cargo test --test cli docs` rewrites them.

use std::{fs, path::Path};

pub fn completions_and_man_pages_are_fresh() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bless = std::env::var_os("BALCTL_BLESS").is_some();
    let mut stale = Vec::new();
    for (path, generated) in balctl::docs::generated_files().expect("generate docs") {
        let path = root.join(path);
        if bless {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &generated).unwrap();
        } else if fs::read(&path).ok().as_ref() != Some(&generated) {
            stale.push(path.display().to_string());
        }
    }
    for dir in ["completions", "man"] {
        let expected: Vec<_> =
            balctl::docs::generated_files().unwrap().into_iter().map(|(p, _)| root.join(p)).collect();
        for entry in fs::read_dir(root.join(dir)).unwrap().flatten() {
            if !expected.contains(&entry.path()) {
                stale.push(format!("{} (not generated any more)", entry.path().display()));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stale generated files (run `BALCTL_BLESS=1 cargo test --test cli docs` and commit): {stale:?}"
    );
}

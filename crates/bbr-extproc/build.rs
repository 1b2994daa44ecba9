//! Records the git commit the binary is built from, for `--version`.
//!
//! `BBR_GIT_COMMIT` in the environment wins (an image build from a source
//! tree without `.git` passes it as a build argument); otherwise
//! `git rev-parse` is asked; without git or outside a checkout the commit
//! is `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo::rerun-if-env-changed=BBR_GIT_COMMIT");
    let commit = match std::env::var("BBR_GIT_COMMIT") {
        Ok(commit) if !commit.trim().is_empty() => commit.trim().to_owned(),
        _ => {
            // Rebuild when HEAD moves: HEAD itself, the branch it names (or
            // the directory it will appear in, when the ref is packed), and
            // packed refs. Only paths that exist: Cargo treats a missing one
            // as always changed.
            let watch = |path: String| {
                if std::path::Path::new(&path).exists() {
                    println!("cargo::rerun-if-changed={path}");
                    true
                } else {
                    false
                }
            };
            if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
                watch(format!("{dir}/HEAD"));
                if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
                    && let Some(common) =
                        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])
                {
                    if !watch(format!("{common}/{branch}")) {
                        watch(format!("{common}/refs/heads"));
                    }
                    watch(format!("{common}/packed-refs"));
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo::rustc-env=BBR_GIT_COMMIT={commit}");
}

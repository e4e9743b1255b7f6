//! The container image starts as shipped, tested without a Docker engine:
//! the Dockerfile's runtime layout (its binary, its read-only config under
//! `/etc/wsgate`, the state directory it creates for uid 10001) is built in
//! a temporary root, and the binary runs as that uid. The paths, owner and
//! modes are read from the Dockerfile itself, and the config is the file
//! it copies, so the two cannot drift apart.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use wsgate_tests::*;

/// What the Dockerfile's runtime stage says about the layout.
#[derive(Debug)]
struct Layout {
    /// `useradd --uid`, also `USER`.
    uid: u32,
    gid: u32,
    /// `install -d -o UID -g GID -m MODE DIR`: the one directory it owns.
    state_dir: String,
    state_mode: u32,
    /// The `COPY SRC DEST` whose DEST is the CMD's `-c` file.
    config_src: String,
    config_dest: String,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn layout() -> Layout {
    let text = std::fs::read_to_string(workspace().join("Dockerfile")).unwrap();
    // The runtime stage: after the last FROM.
    let runtime = text.rsplit_once("\nFROM ").map(|(_, r)| r).unwrap();
    let words: Vec<&str> = runtime.split_whitespace().collect();
    let after = |flag: &str| -> &str {
        let at = words
            .iter()
            .position(|w| *w == flag)
            .unwrap_or_else(|| panic!("the Dockerfile's runtime stage has no `{flag}`"));
        words[at + 1]
    };
    let uid: u32 = after("--uid").parse().unwrap();
    let install = words
        .windows(2)
        .position(|w| w == ["install", "-d"])
        .expect("an `install -d` of the state directory");
    let install_args = &words[install..install + 9];
    let flag = |f: &str| {
        let at = install_args.iter().position(|w| *w == f).unwrap();
        install_args[at + 1]
    };
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    let (user_uid, gid) = user.trim().split_once(':').expect("USER UID:GID");
    assert_eq!(
        user_uid.parse::<u32>().unwrap(),
        uid,
        "USER is the useradd uid"
    );
    assert_eq!(flag("-o").parse::<u32>().unwrap(), uid, "{install_args:?}");
    assert_eq!(flag("-g"), gid, "{install_args:?}");
    let cmd = runtime
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("a CMD line");
    let cmd: Vec<String> = serde_json::from_str(cmd).unwrap();
    let c = cmd.iter().position(|a| a == "-c").expect("CMD passes -c");
    let config_dest = cmd[c + 1].clone();
    let config_src = runtime
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .find_map(|l| {
            let (src, dest) = l.trim().split_once(' ')?;
            (dest == config_dest).then(|| src.to_string())
        })
        .expect("a COPY of the CMD's config");
    Layout {
        uid,
        gid: gid.parse().unwrap(),
        state_dir: install_args[8].to_string(),
        state_mode: u32::from_str_radix(flag("-m"), 8).unwrap(),
        config_src,
        config_dest,
    }
}

/// `dir` under `root`, for an absolute path of the image.
fn inside(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

/// The image's file system in a fresh directory: the binary, the config
/// directory and file as COPY makes them (root's, 0755 and 0644), the
/// state directory as `install -d` makes it. Returns the root and the
/// config text with the image's absolute state paths moved under the root
/// and its ports on loopback port 0 (the test must not take fixed ports),
/// and its backend at `backend`.
fn build_root(l: &Layout, backend: std::net::SocketAddr) -> (PathBuf, String) {
    let root = scratch("image");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin_dir = inside(&root, "usr/local/bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::copy(bin("wsgate"), bin_dir.join("wsgate")).unwrap();
    let config_dir = inside(&root, &l.config_dest);
    let config_dir = config_dir.parent().unwrap();
    std::fs::create_dir_all(config_dir).unwrap();
    for d in [root.join("etc"), config_dir.to_path_buf()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let state = inside(&root, &l.state_dir);
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(l.state_mode)).unwrap();
    chown(&state, l.uid, l.gid);
    let shipped = std::fs::read_to_string(workspace().join(&l.config_src)).unwrap();
    let mut yaml = shipped.clone();
    for (from, to) in [
        (format!("{}/", l.state_dir), format!("{}/", state.display())),
        (
            "\"0.0.0.0:8443\"".to_string(),
            "\"127.0.0.1:0\"".to_string(),
        ),
        (
            "\"127.0.0.1:9900\"".to_string(),
            "\"127.0.0.1:0\"".to_string(),
        ),
        ("\"127.0.0.1:9001\"".to_string(), format!("\"{backend}\"")),
    ] {
        assert!(
            yaml.contains(&from),
            "{} no longer has {from}: update this test with it",
            l.config_src
        );
        yaml = yaml.replace(&from, &to);
    }
    (root, yaml)
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn as_user(l: &Layout) -> [String; 5] {
    [
        "setpriv".into(),
        format!("--reuid={}", l.uid),
        format!("--regid={}", l.gid),
        "--clear-groups".into(),
        "--".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_layout_starts_as_uid_10001_with_its_own_config() {
    if !is_root() {
        eprintln!("SKIPPED: running as uid 10001 needs root (setpriv); this test is not root");
        return;
    }
    let l = layout();
    assert_eq!((l.uid, l.gid), (10001, 10001), "{l:?}");
    assert_eq!(l.config_src, "deploy/docker/wsgate.yaml", "{l:?}");
    let backend = Backend::start("chat-1").unwrap();
    let (root, yaml) = build_root(&l, backend.addr);
    let config_dir = inside(&root, &l.config_dest)
        .parent()
        .unwrap()
        .to_path_buf();
    let program = inside(&root, "usr/local/bin/wsgate");
    let wrapper = as_user(&l);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let gate = Gate::launch_program(&program, &wrapper, config_dir.clone(), &yaml, 1).unwrap();

    // It runs as the image's user, which cannot write the config directory.
    let status = std::fs::read_to_string(format!("/proc/{}/status", gate.proc.pid())).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uids.split_whitespace().skip(1).all(|u| u == "10001"),
        "{uids}"
    );
    let config_meta = std::fs::metadata(&config_dir).unwrap();
    assert_eq!((config_meta.uid(), config_meta.mode() & 0o777), (0, 0o755));
    // What it created is in the state directory, its own, private where secret.
    let state = inside(&root, &l.state_dir);
    for (file, mode) in [
        ("dev.crt", 0o644),
        ("dev.key", 0o600),
        ("admin.token", 0o600),
    ] {
        let m = std::fs::metadata(state.join(file))
            .unwrap_or_else(|e| panic!("{file} was not created in {}: {e}", state.display()));
        assert_eq!((m.uid(), m.mode() & 0o777), (l.uid, mode), "{file}");
    }
    let mut left: Vec<String> = std::fs::read_dir(&config_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["wsgate.yaml"], "nothing written next to the config");

    // It serves: the generated certificate, a user through to the backend,
    // and the admin API's readiness probe.
    let mut ws = wss_at(gate.addr(), &state.join("dev.crt"), "/echo?user=alice")
        .await
        .unwrap();
    assert_eq!(hello(&mut ws).await.unwrap(), "chat-1");
    let mut s = tokio::time::timeout(STEP, TcpStream::connect(gate.admin.unwrap()))
        .await
        .unwrap()
        .unwrap();
    let resp = raw_request(
        &mut s,
        b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status_of(&resp), Some(200), "{resp}");
}

#[test]
fn without_a_writable_state_directory_it_says_what_to_mount() {
    if !is_root() {
        eprintln!("SKIPPED: running as uid 10001 needs root (setpriv); this test is not root");
        return;
    }
    let l = layout();
    let (root, yaml) = build_root(&l, "127.0.0.1:9".parse().unwrap());
    // A read-only root file system with nothing mounted there: the
    // directory exists but is root's.
    let state = inside(&root, &l.state_dir);
    chown(&state, 0, 0);
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = inside(&root, &l.config_dest);
    std::fs::write(&config, yaml).unwrap();
    let wrapper = as_user(&l);
    let mut child = Command::new(&wrapper[0])
        .args(&wrapper[1..])
        .arg(inside(&root, "usr/local/bin/wsgate"))
        .args(["run", "-c"])
        .arg(&config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + STEP;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wsgate started without a writable {}", state.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_ne!(code, Some(0), "{err}");
    let hint = format!(
        "make {} writable by wsgate's user (mount a writable volume there)",
        state.display()
    );
    assert!(err.contains(&hint), "expected `{hint}` in:\n{err}");
    assert!(err.contains("Permission denied"), "{err}");
}

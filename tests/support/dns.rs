//! A real DNS server for the discovery tests: Debian's dnsmasq
//! (`scripts/setup.sh --test` installs `dnsmasq-base`) on a loopback port,
//! answering only from two files the test writes and for nothing else
//! (`--local=/test/`, no upstream, no `/etc/hosts`):
//!
//! - `hosts`, in `/etc/hosts` form, read again on SIGHUP ([`Dnsmasq::set_hosts`]);
//! - `records.conf`, dnsmasq options such as `srv-host=` and
//!   `host-record=`. dnsmasq reads options only when it starts (SIGHUP
//!   rereads hosts files, not its configuration), so
//!   [`Dnsmasq::set_records`] restarts it on the same port.
//!
//! The process is killed when the handle drops.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::STEP;

pub struct Dnsmasq {
    /// Where it answers, UDP and TCP.
    pub addr: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
}

/// The dnsmasq binary: on PATH, or where Debian puts it (`/usr/sbin` is
/// not on every user's PATH).
fn program() -> PathBuf {
    let sbin = Path::new("/usr/sbin/dnsmasq");
    if sbin.exists() {
        sbin.to_path_buf()
    } else {
        PathBuf::from("dnsmasq")
    }
}

/// A loopback port free for both UDP and TCP (DNS uses both), below
/// Linux's ephemeral range (32768 and up): the tests restart dnsmasq on
/// the same port, and a port from that range could meanwhile be taken by
/// any outgoing connection on the machine.
fn free_port() -> Result<u16> {
    for _ in 0..200 {
        let port = rand::random::<u16>() % 12_000 + 20_000;
        let udp = UdpSocket::bind(("127.0.0.1", port));
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        if udp.is_ok() && tcp.is_ok() {
            return Ok(port);
        }
    }
    bail!("no loopback port free for both UDP and TCP")
}

/// Writes `text` to `path` through a rename, so dnsmasq never reads half
/// a file.
fn write_whole(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

impl Dnsmasq {
    /// Starts dnsmasq in `dir` with empty `hosts` and `records.conf`.
    pub fn start(dir: &Path) -> Result<Dnsmasq> {
        write_whole(&dir.join("hosts"), "")?;
        write_whole(&dir.join("records.conf"), "")?;
        let mut d = Dnsmasq {
            addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            dir: dir.to_path_buf(),
            child: None,
        };
        d.spawn()?;
        Ok(d)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = self.dir.join("dnsmasq.log");
        let child = Command::new(program())
            .arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .arg(format!(
                "--conf-file={}",
                self.dir.join("records.conf").display()
            ))
            .arg(format!("--port={}", self.addr.port()))
            .arg("--listen-address=127.0.0.1")
            .arg("--bind-interfaces")
            .arg("--no-resolv")
            .arg("--no-hosts")
            // Answer for *.test from the files alone: NODATA for a missing
            // AAAA instead of REFUSED, NXDOMAIN for an unknown name.
            .arg("--local=/test/")
            .arg(format!("--addn-hosts={}", self.dir.join("hosts").display()))
            .arg("--pid-file=")
            .arg("--log-facility=-")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("dnsmasq is installed by scripts/setup.sh --test")?;
        self.child = Some(child);
        // It answers TCP once it answers at all.
        let deadline = Instant::now() + STEP;
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("dnsmasq exited at start ({status}): {}", said.trim());
            }
            if Instant::now() > deadline {
                bail!("dnsmasq did not listen on {} within {STEP:?}", self.addr);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Replaces the A/AAAA records (`(address, name)` lines) and has
    /// dnsmasq read them again (SIGHUP).
    pub fn set_hosts(&self, entries: &[(&str, &str)]) -> Result<()> {
        let text: String = entries
            .iter()
            .map(|(ip, name)| format!("{ip} {name}\n"))
            .collect();
        write_whole(&self.dir.join("hosts"), &text)?;
        let pid = self
            .child
            .as_ref()
            .map(Child::id)
            .context("dnsmasq is not running")?;
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -HUP {pid} failed");
        }
        Ok(())
    }

    /// Replaces the option lines (`srv-host=...`, `host-record=...`) and
    /// restarts dnsmasq on the same port to read them.
    pub fn set_records(&mut self, lines: &[String]) -> Result<()> {
        let mut text = lines.join("\n");
        text.push('\n');
        write_whole(&self.dir.join("records.conf"), &text)?;
        self.stop();
        self.spawn()
    }

    /// Stops answering: the process is killed (and reaped).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port with the same files.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

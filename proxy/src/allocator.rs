//! The binary's global allocator: jemalloc, with the settings that
//! `.cargo/config.toml` compiles into it.
//!
//! Why not the system allocator: every WebSocket handshake allocates tens of
//! kilobytes that die with it (HTTP parsing and buffers on both sides) next
//! to a few long-lived objects (the tunnel task, two socket registrations).
//! glibc's malloc places the long-lived ones in the holes the dead ones
//! leave, so after a burst of handshakes the heap is pages with a few live
//! objects each: at 9,000 idle plain-ws connections, 20 MB live in 39 MB of
//! heap, and `malloc_trim` gives back only 5 MB of it. jemalloc keeps each
//! size class in slabs of its own, so the handshake garbage empties whole
//! slabs, and with a decay time of zero it returns them at once. The same
//! run measured 3.9 KiB per idle connection with glibc and 2.3 KiB with this
//! (BENCHMARKS.md), with no change in handshake or per-message CPU.

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The settings compiled into the allocator (empty when the feature is off
/// or the build did not pass any), logged at start-up so a build that lost
/// them shows it.
pub fn settings() -> String {
    #[cfg(feature = "jemalloc")]
    {
        match tikv_jemalloc_ctl::config::malloc_conf::read() {
            Ok(conf) => format!("jemalloc ({conf})"),
            Err(e) => format!("jemalloc (settings unreadable: {e})"),
        }
    }
    #[cfg(not(feature = "jemalloc"))]
    {
        "system allocator".to_string()
    }
}

#[cfg(all(test, feature = "jemalloc"))]
mod tests {
    /// The memory figures in BENCHMARKS.md depend on these settings reaching
    /// jemalloc's build through `.cargo/config.toml`.
    #[test]
    fn jemalloc_returns_emptied_pages_at_once() {
        let conf = tikv_jemalloc_ctl::config::malloc_conf::read().expect("jemalloc answers");
        assert!(
            conf.contains("dirty_decay_ms:0"),
            "compiled-in settings: {conf:?}"
        );
        assert!(
            conf.contains("muzzy_decay_ms:0"),
            "compiled-in settings: {conf:?}"
        );
    }
}

//! Maps a config key path such as `pools.chat.backends[1].address` to the
//! line and column where it appears in the YAML source.
//!
//! serde gives positions only for syntax and type errors. Semantic errors
//! (a bad address, a route naming an unknown pool) are found after
//! deserialisation, so we re-read the source as a stream of marked YAML
//! events and remember where each key path starts. This runs only when a
//! config is loaded, never on the data path.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Positions of every key path in one YAML document.
#[derive(Debug, Default)]
pub struct Locator {
    positions: HashMap<String, Position>,
}

impl Locator {
    /// Builds the index. A source that does not parse yields an empty index:
    /// the caller already reports the syntax error with its own position.
    pub fn new(source: &str) -> Locator {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(source);
        if parser.load(&mut walker, false).is_err() {
            return Locator::default();
        }
        Locator {
            positions: walker.positions,
        }
    }

    /// Position of `path`, or of its closest ancestor that exists in the file
    /// (a missing key is reported where its parent is).
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut candidate = path;
        loop {
            if let Some(p) = self.positions.get(candidate) {
                return Some(*p);
            }
            let cut = candidate.rfind(['.', '['])?;
            candidate = &candidate[..cut];
        }
    }
}

enum Frame {
    Map { key: Option<String> },
    Seq { next: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<(Frame, String)>,
    positions: HashMap<String, Position>,
}

impl Walker {
    /// Called for every node; returns the path of that node if it is a value
    /// (not a mapping key) and records it.
    fn value_path(&mut self, mark: Marker) -> Option<String> {
        let (frame, parent) = self.stack.last_mut()?;
        let path = match frame {
            Frame::Map { key } => {
                let key = key.take()?;
                join(parent, &key)
            }
            Frame::Seq { next } => {
                let path = format!("{parent}[{next}]");
                *next += 1;
                path
            }
        };
        self.positions.entry(path.clone()).or_insert(to_pos(mark));
        Some(path)
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn to_pos(mark: Marker) -> Position {
    // yaml-rust2 markers: lines are 1-based, columns 0-based.
    Position {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(text, ..) => {
                if let Some((Frame::Map { key }, parent)) = self.stack.last_mut() {
                    if key.is_none() {
                        // This scalar is a key: remember where the entry starts.
                        let path = join(parent, &text);
                        self.positions.entry(path).or_insert(to_pos(mark));
                        *key = Some(text);
                        return;
                    }
                }
                self.value_path(mark);
            }
            Event::MappingStart(..) => {
                let path = self.value_path(mark).unwrap_or_default();
                self.stack.push((Frame::Map { key: None }, path));
            }
            Event::SequenceStart(..) => {
                let path = self.value_path(mark).unwrap_or_default();
                self.stack.push((Frame::Seq { next: 0 }, path));
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                self.value_path(mark);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "listeners:\n  - name: a\n    address: \"x\"\npools:\n  chat:\n    backends:\n      - { id: b1, address: \"127.0.0.1:1\" }\n      - id: b2\n        address: nope\n";

    #[test]
    fn finds_nested_keys_and_sequence_items() {
        let l = Locator::new(SRC);
        assert_eq!(
            l.find("listeners[0].address"),
            Some(Position { line: 3, column: 5 })
        );
        assert_eq!(
            l.find("pools.chat.backends[1].address"),
            Some(Position { line: 9, column: 9 })
        );
        assert_eq!(
            l.find("pools.chat.backends[0].id"),
            Some(Position {
                line: 7,
                column: 11
            })
        );
    }

    #[test]
    fn missing_key_falls_back_to_parent() {
        let l = Locator::new(SRC);
        assert_eq!(
            l.find("pools.chat.backends[1].weight"),
            l.find("pools.chat.backends[1]")
        );
        assert_eq!(l.find("nothing.here"), None);
    }

    #[test]
    fn unparseable_source_gives_empty_index() {
        assert_eq!(Locator::new("a: [").find("a"), None);
    }
}

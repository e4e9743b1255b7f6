//! Chat cluster tests (issue 3): filled in by the chat backend work.

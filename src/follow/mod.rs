//! Following the audit log across rotations: which files to read and in what order (`tail`),
//! splitting their bytes into lines (`lines`), and the identity and saved position of each file
//! (`offsets`).

pub mod lines;
pub mod offsets;
pub mod tail;

//! Following the audit log across rotations: which files to read and in what order (`tail`),
//! splitting their bytes into lines (`lines`), the identity and saved position of each file
//! (`offsets`), and the thread that writes that position (`saver`).

pub mod lines;
pub mod offsets;
pub mod saver;
pub mod tail;

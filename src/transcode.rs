//! transcode (being written)

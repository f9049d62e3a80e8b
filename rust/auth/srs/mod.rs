//! SRS.

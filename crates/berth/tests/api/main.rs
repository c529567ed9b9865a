//! End-to-end tests of the registry API against the real `berth` binary: every endpoint,
//! every error code, and each kind of bad input.

#[path = "../common/mod.rs"]
mod common;
#[path = "../../../meta/tests/support/postgres.rs"]
mod pg;
#[path = "../../../storage/tests/support/s3.rs"]
mod s3support;

mod access_attacks;
mod auth;
mod bad_input;
mod blobs;
mod cli;
mod connections;
mod gc;
mod import;
mod lifecycle;
mod listing;
mod manifests;
mod ops;
mod permissions;
mod postgres;
mod restart;
mod s3;
mod tls;
mod ui;
mod uploads;

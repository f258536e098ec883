//! deepseek_proxy: a gateway that lets a team share one DeepSeek key.
//!
//! Where a request goes: [`routes`] -> [`access_log`] -> [`auth`] (token
//! check) -> [`proxy`] (slot from [`limits`], the body checked as its
//! [`formats`] says, [`proxy::prepare`], then [`proxy::upstream`], then the
//! [`proxy::relay`] body, with its [`usage`] tap). Errors are
//! [`error::ApiError`], worded in each format's dialect.

pub mod ablation;
pub mod access_log;
pub mod active;
pub mod admin;
pub mod app;
pub mod auth;
pub mod body;
pub mod check;
pub mod cli;
pub mod client_ip;
pub mod config;
pub mod console;
pub mod demo;
pub mod error;
pub mod formats;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod own_wakes;
pub mod proxy;
pub mod reload;
pub mod routes;
pub mod service;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod upstreams;
pub mod usage;
pub mod users;

pub use app::App;
pub use config::Config;

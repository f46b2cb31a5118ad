//! Black-box tests of API.md: each test spawns the real server on port 0 with a fresh
//! SQLite database and talks to it over loopback.

mod helpers;

mod auth;
mod channels;
mod limits;
mod messages;
mod system;
mod websocket;

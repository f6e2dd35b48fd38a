//! The API's integration tests: one binary, every test against a real server on port 0 with a
//! temporary data directory and the real SQLite store (`fenced_writer.rs`: PostgreSQL, when
//! HANDOFF_TEST_POSTGRES_URL is set).

mod agent_wait;
mod bad_input;
mod commit_failure;
mod context;
mod crm;
mod ended;
mod fenced_writer;
mod handoff_flow;
mod isolation;
mod openapi_conformance;
mod pop_url;
mod presence;
mod protocol_edges;
mod queues;
mod rate_limit;
mod receiver;
mod replay;
mod stream_lifecycle;
mod uc_csta;
mod uc_sip;
mod uc_support;
mod uc_xmpp;
mod web;
mod webhooks;

pub mod support;

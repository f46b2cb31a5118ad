//! Cluster membership as the shared database records it.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::App;
use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody};
use crate::model::Timestamp;

#[derive(Serialize, ToSchema)]
pub(super) struct NodeStatus {
    node_id: String,
    addr: String,
    version: String,
    /// `up` while the node's last heartbeat is within the lease (by the database's clock), else `down`.
    status: &'static str,
    generation: i64,
    #[schema(value_type = String, format = DateTime)]
    last_seen: Timestamp,
}

/// Every node that has joined the cluster, and whether it is up.
#[utoipa::path(get, path = "/api/v1/cluster/nodes", tag = "cluster", security(("bearer" = [])), responses(
    (status = 200, body = [NodeStatus]), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
    (status = 500, body = ErrorBody), (status = 503, body = ErrorBody),
))]
pub(super) async fn nodes(State(app): State<Arc<App>>, _auth: AuthUser) -> Result<Json<Vec<NodeStatus>>, ApiError> {
    let nodes = app.store.nodes(app.settings.cluster.lease).await?;
    Ok(Json(
        nodes
            .into_iter()
            .map(|node| NodeStatus {
                status: if node.up { "up" } else { "down" },
                node_id: node.heartbeat.node_id,
                addr: node.heartbeat.addr,
                version: node.heartbeat.version,
                generation: node.heartbeat.generation,
                last_seen: node.last_seen,
            })
            .collect(),
    ))
}

//! Each request counted and timed by method, route template and status, through metric
//! handles looked up once per combination: building the labels afresh (three strings)
//! and finding the series in the recorder on every request cost more than a cheap route
//! itself.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use metrics::{Counter, Histogram};

use crate::metrics::{HTTP_REQUESTS_TOTAL, HTTP_REQUEST_SECONDS};

/// The route label of a request no route matched.
pub(super) const UNMATCHED: &str = "unmatched";

/// One series pair: requests counted by status, durations by method and route.
struct Series {
    method: Method,
    status: StatusCode,
    requests: Counter,
    seconds: Histogram,
}

/// The handles met so far, by route template; a route has few method and status pairs,
/// so they are searched in a list.
#[derive(Default)]
pub(super) struct RequestMetrics {
    by_route: RwLock<HashMap<Box<str>, Vec<Series>>>,
}

impl RequestMetrics {
    /// Counts and times a request by its route template (not its path, which would make
    /// one time series per channel id).
    pub(super) fn record(&self, method: &Method, route: &str, status: StatusCode, took: Duration) {
        let seconds = took.as_secs_f64();
        self.with_series(method, route, status, |series| {
            series.requests.increment(1);
            series.seconds.record(seconds);
        });
    }

    /// Runs `use_it` on the request's series, under the read lock once it exists: a
    /// request clones no handle.
    fn with_series(&self, method: &Method, route: &str, status: StatusCode, use_it: impl FnOnce(&Series)) {
        let find = |routes: &HashMap<Box<str>, Vec<Series>>| -> Option<usize> {
            routes
                .get(route)?
                .iter()
                .position(|series| series.status == status && series.method == method)
        };
        // A panic cannot leave the map half-updated (each update is one insert or push),
        // so a poisoned lock is still usable.
        {
            let routes = self.by_route.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(index) = find(&routes) {
                return use_it(&routes[route][index]);
            }
        }
        let mut routes = self.by_route.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let index = find(&routes).unwrap_or_else(|| {
            let (method_label, route_label) = (method.to_string(), route.to_string());
            let series = Series {
                method: method.clone(),
                status,
                requests: metrics::counter!(HTTP_REQUESTS_TOTAL,
                    "method" => method_label.clone(), "route" => route_label.clone(), "status" => status.as_u16().to_string()),
                seconds: metrics::histogram!(HTTP_REQUEST_SECONDS, "method" => method_label, "route" => route_label),
            };
            let list = routes.entry(route.into()).or_default();
            list.push(series);
            list.len() - 1
        });
        use_it(&routes[route][index]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_method_route_and_status_gets_its_own_series_once() {
        let metrics = RequestMetrics::default();
        let mut ok = None;
        metrics.with_series(&Method::GET, "/health", StatusCode::OK, |series| {
            ok = Some((series.method.clone(), series.status));
        });
        let touch = |method: &Method, route, status| metrics.with_series(method, route, status, |_| {});
        touch(&Method::GET, "/health", StatusCode::OK);
        touch(&Method::GET, "/health", StatusCode::SERVICE_UNAVAILABLE);
        touch(&Method::POST, "/health", StatusCode::OK);
        touch(&Method::GET, UNMATCHED, StatusCode::NOT_FOUND);
        let routes = metrics.by_route.read().unwrap();
        assert_eq!(routes["/health"].len(), 3);
        assert_eq!(routes[UNMATCHED].len(), 1);
        assert_eq!(ok, Some((Method::GET, StatusCode::OK)));
    }
}

//! Request counters read from the operator's `/metrics`, and their growth between two readings.

use std::collections::BTreeMap;

/// `kacme_acme_requests_total{action="..",outcome=".."} value` lines summed by "action outcome" (for
/// example `order success`), from a Prometheus text exposition.
pub fn acme_request_counts(exposition: &str) -> BTreeMap<String, u64> {
    counter_by_labels(exposition, "kacme_acme_requests_total", ["action", "outcome"])
}

/// cert-manager's `certmanager_http_acme_client_request_count{action="..",status=".."}` (its count of
/// outbound ACME requests) summed by "action status" (for example `get_order 200`).
pub fn cert_manager_acme_request_counts(exposition: &str) -> BTreeMap<String, u64> {
    counter_by_labels(exposition, "certmanager_http_acme_client_request_count", ["action", "status"])
}

/// The samples of counter `metric` summed by the values of two labels, joined by a space.
fn counter_by_labels(exposition: &str, metric: &str, keys: [&str; 2]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(metric) else { continue };
        let (labels, value) = match rest.strip_prefix('{').and_then(|r| r.split_once('}')) {
            Some((labels, value)) => (labels, value),
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        let label = |name: &str| {
            labels.split(',').find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                (key.trim() == name).then(|| value.trim().trim_matches('"').to_string())
            })
        };
        let Some(value) = value.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) else { continue };
        let key = format!("{} {}", label(keys[0]).unwrap_or_default(), label(keys[1]).unwrap_or_default());
        *counts.entry(key).or_insert(0) += value as u64;
    }
    counts
}

/// `later - earlier` per key, leaving out the keys that did not grow.
pub fn count_growth(later: &BTreeMap<String, u64>, earlier: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    later
        .iter()
        .map(|(key, value)| (key.clone(), value.saturating_sub(earlier.get(key).copied().unwrap_or(0))))
        .filter(|(_, value)| *value > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acme_request_counters_are_read_from_the_exposition_and_compared() {
        let text = "# HELP kacme_acme_requests Requests to ACME CAs\n\
                    # TYPE kacme_acme_requests counter\n\
                    kacme_acme_requests_total{action=\"order\",outcome=\"success\"} 12\n\
                    kacme_acme_requests_total{outcome=\"network_error\",action=\"order\"} 3\n\
                    kacme_acme_requests_total{action=\"nonce\",outcome=\"success\"} 1\n\
                    kacme_acme_request_duration_seconds_bucket{action=\"order\",le=\"0.1\"} 9\n";
        let counts = acme_request_counts(text);
        assert_eq!(counts.get("order success"), Some(&12));
        assert_eq!(counts.get("order network_error"), Some(&3));
        assert_eq!(counts.values().sum::<u64>(), 16);
        let earlier = BTreeMap::from([("order success".to_string(), 10), ("nonce success".to_string(), 1)]);
        let growth = count_growth(&counts, &earlier);
        assert_eq!(growth, BTreeMap::from([("order success".to_string(), 2), ("order network_error".to_string(), 3)]));
    }

    #[test]
    fn cert_managers_acme_request_counter_is_read_by_action_and_status() {
        let text = "# TYPE certmanager_http_acme_client_request_count counter\n\
                    certmanager_http_acme_client_request_count{action=\"get_order\",host=\"127.0.0.1:14000\",method=\"POST\",scheme=\"https\",status=\"200\"} 7\n\
                    certmanager_http_acme_client_request_count{action=\"get_order\",host=\"127.0.0.2:14000\",method=\"POST\",scheme=\"https\",status=\"200\"} 1\n\
                    certmanager_http_acme_client_request_count{action=\"new_nonce\",host=\"h\",method=\"HEAD\",scheme=\"https\",status=\"200\"} 2\n\
                    certmanager_http_acme_client_request_duration_seconds_count{action=\"get_order\",status=\"200\"} 8\n";
        let counts = cert_manager_acme_request_counts(text);
        assert_eq!(counts, BTreeMap::from([("get_order 200".to_string(), 8), ("new_nonce 200".to_string(), 2)]));
        assert!(acme_request_counts(text).is_empty());
    }
}

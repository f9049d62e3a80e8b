//! `DnsCache` and its frozen `CacheStats`: the Rust LRU of `cache.rs` holding Python objects.
//!
//! The cache stores any Python object per (kind, domain). The hit path (`get`, `sender_status`)
//! borrows the domain as `&str`, takes the lock, bumps a reference count and returns: no copy,
//! no allocation. Objects that leave the cache are released after the lock is dropped, so a
//! `__del__` that touches the cache cannot deadlock it.

use std::time::Duration;

use pyo3::prelude::*;

use super::errors::to_py_err;
use crate::cache::{self, AnyClock, CacheStats, DnsCache, Freshness, Kind, TtlLimits};

fn kind(py: Python<'_>, value: &str) -> PyResult<Kind> {
    Kind::parse(value).map_err(|e| to_py_err(py, e))
}

fn seconds(py: Python<'_>, what: &'static str, value: f64) -> PyResult<Duration> {
    cache::seconds(what, value).map_err(|e| to_py_err(py, e))
}

/// A bounded, thread-safe LRU of DNS outcomes with per-entry expiry.
#[pyclass(frozen, name = "DnsCache", module = "deliverypool")]
pub struct PyDnsCache(DnsCache<Py<PyAny>, AnyClock>);

impl PyDnsCache {
    /// The live object for (kind, domain), for the Rust side of the relay (auth.rs reads the
    /// authentication checks' answers here); counts a hit or a miss like `get`.
    pub(super) fn object(&self, py: Python<'_>, kind: Kind, domain: &str) -> Option<Py<PyAny>> {
        self.0.get_with(kind, domain, |v| v.clone_ref(py))
    }
}

#[pymethods]
impl PyDnsCache {
    #[new]
    #[pyo3(signature = (capacity=10_000, *, min_ttl=5.0, max_ttl=86_400.0, max_negative_ttl=3_600.0, unknown_ttl=10.0, manual_clock=false))]
    fn new(
        py: Python<'_>,
        capacity: usize,
        min_ttl: f64,
        max_ttl: f64,
        max_negative_ttl: f64,
        unknown_ttl: f64,
        manual_clock: bool,
    ) -> PyResult<Self> {
        let limits = TtlLimits {
            min_ttl: seconds(py, "min_ttl", min_ttl)?,
            max_ttl: seconds(py, "max_ttl", max_ttl)?,
            max_negative_ttl: seconds(py, "max_negative_ttl", max_negative_ttl)?,
            unknown_ttl: seconds(py, "unknown_ttl", unknown_ttl)?,
        };
        DnsCache::new(capacity, limits, AnyClock::new(manual_clock)).map(PyDnsCache).map_err(|e| to_py_err(py, e))
    }

    /// The live value for (kind, domain), or None. Counts a hit or a miss.
    fn get(&self, py: Python<'_>, kind: &str, domain: &str) -> PyResult<Option<Py<PyAny>>> {
        Ok(self.0.get_with(self::kind(py, kind)?, domain, |v| v.clone_ref(py)))
    }

    /// `get("sender", domain)`: the cached sender-domain outcome, on the per-message path.
    fn sender_status(&self, py: Python<'_>, domain: &str) -> Option<Py<PyAny>> {
        self.0.get_with(Kind::SenderStatus, domain, |v| v.clone_ref(py))
    }

    /// Stores `value` and returns how many seconds it will live. `outcome` picks the TTL rule:
    /// "positive" (record TTL), "negative" (RFC 2308 negative TTL), "unknown" (`unknown_ttl`;
    /// `ttl` is ignored).
    #[pyo3(signature = (kind, domain, value, *, ttl=None, outcome="positive"))]
    fn put(&self, py: Python<'_>, kind: &str, domain: &str, value: Py<PyAny>, ttl: Option<u32>, outcome: &str) -> PyResult<f64> {
        let kind = self::kind(py, kind)?;
        let freshness = Freshness::parse(outcome, ttl).map_err(|e| to_py_err(py, e))?;
        let (lifetime, displaced) = self.0.insert(kind, domain, value, freshness);
        drop(displaced); // after the lock: releasing objects may run Python code
        Ok(lifetime.as_secs_f64())
    }

    /// Seconds left for a live entry, or None; neither a hit nor a miss, and no LRU change.
    fn remaining_ttl(&self, py: Python<'_>, kind: &str, domain: &str) -> PyResult<Option<f64>> {
        Ok(self.0.remaining_ttl(self::kind(py, kind)?, domain).map(|d| d.as_secs_f64()))
    }

    /// Removes an entry and returns its value (live or expired), or None.
    fn remove(&self, py: Python<'_>, kind: &str, domain: &str) -> PyResult<Option<Py<PyAny>>> {
        Ok(self.0.remove(self::kind(py, kind)?, domain))
    }

    fn clear(&self) {
        drop(self.0.clear());
    }

    /// (kind, domain) pairs from most to least recently used, expired ones included.
    fn keys(&self) -> Vec<(&'static str, String)> {
        self.0.keys_by_recency().into_iter().map(|(k, d)| (k.as_str(), d)).collect()
    }

    fn stats(&self) -> PyCacheStats {
        PyCacheStats(self.0.stats())
    }

    /// Moves a manual clock forward (a cache made with `manual_clock=True`); for tests.
    fn advance_clock(&self, py: Python<'_>, seconds: f64) -> PyResult<()> {
        self.0.clock().advance(self::seconds(py, "seconds", seconds)?).map_err(|e| to_py_err(py, e))
    }

    /// The RFC 2308 negative TTL: min(SOA TTL, SOA MINIMUM).
    #[staticmethod]
    fn negative_ttl(soa_ttl: u32, soa_minimum: u32) -> u32 {
        cache::negative_ttl(soa_ttl, soa_minimum)
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.0.capacity()
    }

    #[getter]
    fn min_ttl(&self) -> f64 {
        self.0.limits().min_ttl.as_secs_f64()
    }

    #[getter]
    fn max_ttl(&self) -> f64 {
        self.0.limits().max_ttl.as_secs_f64()
    }

    #[getter]
    fn max_negative_ttl(&self) -> f64 {
        self.0.limits().max_negative_ttl.as_secs_f64()
    }

    #[getter]
    fn unknown_ttl(&self) -> f64 {
        self.0.limits().unknown_ttl.as_secs_f64()
    }

    fn __len__(&self) -> usize {
        self.0.len()
    }

    fn __repr__(&self) -> String {
        let s = self.0.stats();
        format!("DnsCache(capacity={}, len={}, hits={}, misses={})", s.capacity, s.len, s.hits, s.misses)
    }
}

/// A snapshot of the cache's counters.
#[pyclass(frozen, eq, name = "CacheStats", module = "deliverypool")]
#[derive(PartialEq)]
pub struct PyCacheStats(CacheStats);

#[pymethods]
impl PyCacheStats {
    #[getter]
    fn hits(&self) -> u64 {
        self.0.hits
    }
    #[getter]
    fn misses(&self) -> u64 {
        self.0.misses
    }
    #[getter]
    fn expirations(&self) -> u64 {
        self.0.expirations
    }
    #[getter]
    fn evictions(&self) -> u64 {
        self.0.evictions
    }
    #[getter]
    fn insertions(&self) -> u64 {
        self.0.insertions
    }
    #[getter]
    fn len(&self) -> usize {
        self.0.len
    }
    #[getter]
    fn capacity(&self) -> usize {
        self.0.capacity
    }

    /// The counters as a dict (for JSON output and metrics).
    fn as_dict(&self) -> std::collections::BTreeMap<&'static str, u64> {
        let s = self.0;
        [
            ("hits", s.hits),
            ("misses", s.misses),
            ("expirations", s.expirations),
            ("evictions", s.evictions),
            ("insertions", s.insertions),
            ("len", s.len as u64),
            ("capacity", s.capacity as u64),
        ]
        .into_iter()
        .collect()
    }

    fn __repr__(&self) -> String {
        let s = self.0;
        format!(
            "CacheStats(hits={}, misses={}, expirations={}, evictions={}, insertions={}, len={}, capacity={})",
            s.hits, s.misses, s.expirations, s.evictions, s.insertions, s.len, s.capacity
        )
    }
}

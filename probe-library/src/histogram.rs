//! Log2 histograms read from the kernel's per-CPU `hists` array.

use aya::Ebpf;
use aya::maps::PerCpuArray;
use serde::Serialize;
use sonde_probe_abi::HIST_SLOTS;

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Bucket {
    /// Inclusive lower bound.
    pub low: u64,
    /// Exclusive upper bound.
    pub high: u64,
    pub count: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Histogram {
    pub name: String,
    pub unit: String,
    pub total: u64,
    pub buckets: Vec<Bucket>,
}

impl Histogram {
    pub fn from_slots(name: impl Into<String>, unit: impl Into<String>, slots: &[u64]) -> Self {
        let buckets: Vec<Bucket> = slots
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, &count)| Bucket {
                low: if i == 0 { 0 } else { 1u64 << i },
                high: 1u64 << (i + 1).min(63),
                count,
            })
            .collect();
        Histogram {
            name: name.into(),
            unit: unit.into(),
            total: slots.iter().sum(),
            buckets,
        }
    }

    /// Upper bound of the bucket holding the q-quantile (0..=1): log2 resolution, an overestimate by < 2x.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = (q * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        self.buckets
            .iter()
            .find(|b| {
                seen += b.count;
                seen >= rank
            })
            .map(|b| b.high)
    }

    /// A text rendering like libbpf-tools' `print_log2_hist`.
    pub fn render(&self) -> String {
        let max = self
            .buckets
            .iter()
            .map(|b| b.count)
            .max()
            .unwrap_or(0)
            .max(1);
        let mut out = format!("{} ({}), {} samples\n", self.name, self.unit, self.total);
        for b in &self.buckets {
            let bar = "*".repeat(((b.count * 40) / max) as usize);
            out.push_str(&format!(
                "{:>12} -> {:<12} : {:<10} |{:<40}|\n",
                b.low, b.high, b.count, bar
            ));
        }
        out
    }
}

/// Reads `n` histograms of HIST_SLOTS slots each, summing the per-CPU values.
pub fn read_slots(ebpf: &Ebpf, n: usize) -> Vec<Vec<u64>> {
    let Some(map) = ebpf.map("hists") else {
        return vec![vec![0; HIST_SLOTS]; n];
    };
    let Ok(arr) = PerCpuArray::<_, u64>::try_from(map) else {
        return vec![vec![0; HIST_SLOTS]; n];
    };
    (0..n)
        .map(|h| {
            (0..HIST_SLOTS)
                .map(|s| {
                    let idx = (h * HIST_SLOTS + s) as u32;
                    arr.get(&idx, 0).map(|v| v.iter().sum()).unwrap_or(0)
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_bucket_holding_the_rank() {
        let mut slots = vec![0u64; 64];
        slots[3] = 90; // [8, 16)
        slots[10] = 10; // [1024, 2048)
        let h = Histogram::from_slots("x", "ns", &slots);
        assert_eq!(h.total, 100);
        assert_eq!(h.quantile(0.5), Some(16));
        assert_eq!(h.quantile(0.95), Some(2048));
        assert_eq!(
            Histogram::from_slots("e", "ns", &[0; 64]).quantile(0.5),
            None
        );
    }
}

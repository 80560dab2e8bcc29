//! Where a vector lives and how near two vectors are: the routing of
//! vector-only snapshots (CLUSTER and LSH, as the reference routes them),
//! the distances searches score with, and the merge of per-shard results.
//!
//! Routing follows the reference's rules exactly, in `f32` as it computes
//! them:
//! - CLUSTER: the nearest centroid, the lowest index on ties. L2 compares
//!   *squared* distances; cosine uses `1 - dot / (|c| |q| + 1e-10)`, and a
//!   zero query is at distance 1 from every centroid. A query probes the
//!   `num_probes` nearest centroids in a stable order, so its first probe
//!   is where the writer put an identical vector.
//! - LSH: bit `i` of the code is set when `hyperplane[i] . v > 0`
//!   (strictly); the shard is `code % num_dbs`. A query probes its own
//!   shard, then the shards of the code with bit 0, 1, ... flipped,
//!   skipping shards already probed.
//!
//! Scores are distances, lower is nearer, as sqlite-vec returns them:
//! cosine `1 - cos` and Euclidean (not squared) distance.
//!
//! A build makes its own routing artifacts with [`train_centroids`]
//! (k-means) and [`random_hyperplanes`].

use sf_manifest::format::npy::Matrix;
use sf_manifest::format::vector::Metric;

mod train;
pub use train::{random_hyperplanes, train_centroids};

/// The distance between `a` and `b` as a search scores it (sqlite-vec's
/// arithmetic: sums in `f32`, the ratio in `f64`). A zero vector under
/// cosine has no distance: `NaN`, which [`TopK`] never keeps.
pub fn distance(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
    match metric {
        Metric::Cosine => {
            let (mut dot, mut aa, mut bb) = (0f32, 0f32, 0f32);
            for (x, y) in a.iter().zip(b) {
                dot += x * y;
                aa += x * x;
                bb += y * y;
            }
            1.0 - f64::from(dot) / (f64::from(aa.sqrt()) * f64::from(bb.sqrt()))
        }
        Metric::L2 => {
            let mut sum = 0f32;
            for (x, y) in a.iter().zip(b) {
                let d = x - y;
                sum += d * d;
            }
            f64::from(sum.sqrt())
        }
    }
}

/// Why a vector cannot be stored or searched: its length is not the
/// snapshot's dimension, a component is not finite, or it is zero under
/// cosine (it has no direction; sqlite-vec gives it no distance).
pub fn check_vector(metric: Metric, dim: usize, v: &[f32]) -> Result<(), String> {
    if v.len() != dim {
        return Err(format!("has {} components, the snapshot's dimension is {dim}", v.len()));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(format!("component {i} is {}", v[i]));
    }
    if metric == Metric::Cosine && v.iter().all(|x| *x == 0.0) {
        return Err("is zero, which has no cosine distance".into());
    }
    Ok(())
}

/// CLUSTER routing over `centroids` (one row per shard).
#[derive(Debug, Clone)]
pub struct ClusterRouter {
    centroids: Matrix,
    metric: Metric,
}

impl ClusterRouter {
    /// A router over `centroids`, one per shard, compared with `metric`.
    pub fn new(centroids: Matrix, metric: Metric) -> Self {
        ClusterRouter { centroids, metric }
    }

    /// Shards (centroids).
    pub fn num_dbs(&self) -> usize {
        self.centroids.rows
    }

    /// The distance from `q` to every centroid, as the reference computes
    /// it for routing.
    pub fn distances(&self, q: &[f32]) -> Vec<f32> {
        let c = &self.centroids;
        match self.metric {
            Metric::L2 => (0..c.rows)
                .map(|i| c.row(i).iter().zip(q).map(|(x, y)| (x - y) * (x - y)).sum())
                .collect(),
            Metric::Cosine => {
                let qn = norm(q);
                if qn == 0.0 {
                    return vec![1.0; c.rows];
                }
                (0..c.rows)
                    .map(|i| {
                        let row = c.row(i);
                        let dot: f32 = row.iter().zip(q).map(|(x, y)| x * y).sum();
                        1.0 - dot / (norm(row) * qn + 1e-10)
                    })
                    .collect()
            }
        }
    }

    /// The shard a vector is written to: the nearest centroid, the lowest
    /// index among equals.
    pub fn assign(&self, v: &[f32]) -> u32 {
        self.probes(v, 1)[0]
    }

    /// The `num_probes` nearest centroids, nearest first, ties in index
    /// order (a `NaN` distance sorts last).
    pub fn probes(&self, q: &[f32], num_probes: usize) -> Vec<u32> {
        let d = self.distances(q);
        let mut order: Vec<u32> = (0..d.len() as u32).collect();
        order.sort_by(|a, b| d[*a as usize].total_cmp(&d[*b as usize]).then(a.cmp(b)));
        // total_cmp puts negative NaN first; the reference (numpy) puts
        // every NaN last.
        order.sort_by_key(|i| d[*i as usize].is_nan());
        order.truncate(num_probes.max(1));
        order
    }
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// LSH routing: random hyperplanes, the code's bits their signs.
#[derive(Debug, Clone)]
pub struct LshRouter {
    hyperplanes: Matrix,
    num_dbs: u32,
}

impl LshRouter {
    /// A router hashing with `hyperplanes` (one per bit, at most 63) into
    /// `num_dbs` shards.
    pub fn new(hyperplanes: Matrix, num_dbs: u32) -> Result<Self, String> {
        if num_dbs == 0 {
            return Err("num_dbs must be above 0".into());
        }
        if hyperplanes.rows == 0 || hyperplanes.rows > 63 {
            return Err(format!("{} hyperplanes: LSH takes 1 to 63 bits", hyperplanes.rows));
        }
        Ok(LshRouter { hyperplanes, num_dbs })
    }

    /// The hash code of `v`.
    pub fn code(&self, v: &[f32]) -> u64 {
        (0..self.hyperplanes.rows).fold(0u64, |code, i| {
            let p: f32 = self.hyperplanes.row(i).iter().zip(v).map(|(h, x)| h * x).sum();
            if p > 0.0 { code | (1 << i) } else { code }
        })
    }

    /// The shard a vector is written to.
    pub fn assign(&self, v: &[f32]) -> u32 {
        (self.code(v) % u64::from(self.num_dbs)) as u32
    }

    /// The query's own shard, then those of its code with one bit
    /// flipped, bit 0 first, each shard once, at most `num_probes`.
    pub fn probes(&self, q: &[f32], num_probes: usize) -> Vec<u32> {
        let code = self.code(q);
        let n = u64::from(self.num_dbs);
        let mut out = vec![(code % n) as u32];
        for bit in 0..self.hyperplanes.rows {
            if out.len() >= num_probes {
                break;
            }
            let shard = ((code ^ (1 << bit)) % n) as u32;
            if !out.contains(&shard) {
                out.push(shard);
            }
        }
        out.truncate(num_probes.max(1));
        out
    }
}

/// One search result before its id and payload are looked up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// The shard it was found in.
    pub shard: u32,
    /// Its rowid there.
    pub rowid: i64,
    /// Its distance to the query.
    pub score: f64,
}

impl Hit {
    /// Nearest first; equal distances by shard, then rowid, so results do
    /// not depend on the order shards answered in.
    pub fn order(a: &Hit, b: &Hit) -> std::cmp::Ordering {
        a.score
            .total_cmp(&b.score)
            .then(a.shard.cmp(&b.shard))
            .then(a.rowid.cmp(&b.rowid))
    }
}

/// The `k` nearest of the hits pushed into it (an exact top-k). Hits
/// without a distance (`NaN`) are never kept.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    hits: Vec<Hit>,
}

impl TopK {
    /// Keeps at most `k` hits.
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            hits: Vec::with_capacity(k.min(1024) + 1),
        }
    }

    /// Offers one hit.
    pub fn push(&mut self, hit: Hit) {
        if self.k == 0 || hit.score.is_nan() {
            return;
        }
        if self.hits.len() == self.k {
            let worst = self.hits.last().expect("k > 0 hits");
            if Hit::order(&hit, worst) != std::cmp::Ordering::Less {
                return;
            }
            self.hits.pop();
        }
        let at = self
            .hits
            .partition_point(|h| Hit::order(h, &hit) == std::cmp::Ordering::Less);
        self.hits.insert(at, hit);
    }

    /// The kept hits, nearest first.
    pub fn into_sorted(self) -> Vec<Hit> {
        self.hits
    }
}

/// Merges per-shard results into the `k` nearest overall.
pub fn merge(per_shard: impl IntoIterator<Item = Vec<Hit>>, k: usize) -> Vec<Hit> {
    let mut top = TopK::new(k);
    for hits in per_shard {
        for h in hits {
            top.push(h);
        }
    }
    top.into_sorted()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rows: usize, cols: usize, values: &[f32]) -> Matrix {
        Matrix {
            rows,
            cols,
            values: values.to_vec(),
        }
    }

    #[test]
    fn distances_are_sqlite_vecs() {
        assert_eq!(distance(Metric::L2, &[0.0, 3.0], &[4.0, 0.0]), 5.0);
        assert!((distance(Metric::Cosine, &[1.0, 0.0], &[0.0, 2.0]) - 1.0).abs() < 1e-12);
        assert!(distance(Metric::Cosine, &[1.0, 1.0], &[2.0, 2.0]).abs() < 1e-6);
        assert!(distance(Metric::Cosine, &[0.0, 0.0], &[2.0, 2.0]).is_nan());
    }

    #[test]
    fn cluster_ties_go_to_the_lowest_index_and_probe_in_order() {
        // Centroids 1 and 2 are equally near (0, 1); 0 is farther.
        let r = ClusterRouter::new(m(3, 2, &[5.0, 5.0, 1.0, 1.0, -1.0, 1.0]), Metric::L2);
        assert_eq!(r.assign(&[0.0, 1.0]), 1);
        assert_eq!(r.probes(&[0.0, 1.0], 3), vec![1, 2, 0]);
        assert_eq!(r.probes(&[0.0, 1.0], 0), vec![1], "at least one probe");
        // A zero query under cosine is at distance 1 from every centroid:
        // index order.
        let c = ClusterRouter::new(m(3, 2, &[5.0, 5.0, 1.0, 1.0, -1.0, 1.0]), Metric::Cosine);
        assert_eq!(c.distances(&[0.0, 0.0]), vec![1.0; 3]);
        assert_eq!(c.probes(&[0.0, 0.0], 3), vec![0, 1, 2]);
        assert_eq!(c.probes(&[-3.0, 3.0], 2), vec![2, 0]);
        // Cosine ignores length: (4,0) and (1,0) tie exactly; the lower
        // index wins.
        let c = ClusterRouter::new(m(3, 2, &[4.0, 0.0, 1.0, 0.0, 0.0, 1.0]), Metric::Cosine);
        assert_eq!(c.assign(&[2.0, 0.0]), 0);
        assert_eq!(c.probes(&[2.0, 0.0], 3), vec![0, 1, 2]);
        // NaN distances sort last.
        let n = ClusterRouter::new(m(2, 1, &[f32::NAN, 1.0]), Metric::L2);
        assert_eq!(n.probes(&[0.0], 2), vec![1, 0]);
    }

    #[test]
    fn lsh_codes_are_strict_signs_and_probes_flip_bits_in_order() {
        // Bit 0 from x > 0, bit 1 from y > 0, bit 2 from x + y > 0.
        let h = m(3, 2, &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let r = LshRouter::new(h.clone(), 5).unwrap();
        assert_eq!(r.code(&[1.0, 1.0]), 0b111);
        assert_eq!(r.code(&[0.0, 1.0]), 0b110, "0 is not above 0");
        assert_eq!(r.assign(&[1.0, 1.0]), 7 % 5);
        // code 7: own shard 2; flip bit 0 -> 6 % 5 = 1; bit 1 -> 5 % 5 = 0;
        // bit 2 -> 3.
        assert_eq!(r.probes(&[1.0, 1.0], 4), vec![2, 1, 0, 3]);
        // Shards already probed are skipped: 4 shards, code 0 -> 0; flips
        // give 1, 2, 4 % 4 = 0 (seen).
        let r = LshRouter::new(h, 4).unwrap();
        assert_eq!(r.probes(&[-1.0, -1.0], 4), vec![0, 1, 2]);
        assert!(LshRouter::new(m(0, 2, &[]), 4).is_err());
        assert!(LshRouter::new(m(1, 1, &[1.0]), 0).is_err());
    }

    #[test]
    fn vectors_are_checked_for_length_finiteness_and_direction() {
        assert!(check_vector(Metric::L2, 2, &[0.0, 0.0]).is_ok());
        assert!(
            check_vector(Metric::L2, 3, &[0.0, 0.0])
                .unwrap_err()
                .contains("dimension is 3")
        );
        assert!(
            check_vector(Metric::L2, 2, &[f32::NAN, 0.0])
                .unwrap_err()
                .contains("component 0 is NaN")
        );
        assert!(
            check_vector(Metric::L2, 2, &[1.0, f32::INFINITY])
                .unwrap_err()
                .contains("component 1 is inf")
        );
        assert!(
            check_vector(Metric::Cosine, 2, &[0.0, 0.0])
                .unwrap_err()
                .contains("zero")
        );
    }

    #[test]
    fn top_k_keeps_the_nearest_with_deterministic_ties() {
        let hit = |shard, rowid, score| Hit { shard, rowid, score };
        let merged = merge(
            vec![
                vec![hit(2, 0, 0.5), hit(2, 1, 0.1), hit(2, 2, f64::NAN)],
                vec![hit(0, 9, 0.5), hit(0, 3, 0.5), hit(0, 4, 0.9)],
            ],
            3,
        );
        assert_eq!(merged, vec![hit(2, 1, 0.1), hit(0, 3, 0.5), hit(0, 9, 0.5)]);
        assert!(merge(vec![vec![hit(0, 0, 0.0)]], 0).is_empty());
    }
}

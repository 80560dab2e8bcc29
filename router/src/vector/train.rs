//! Routing artifacts a build makes itself: CLUSTER centroids trained by
//! k-means on a sample of the input, and LSH hyperplanes drawn at random.
//!
//! Both are deterministic for a seed: the same sample and seed give the
//! same bytes on every machine (one pseudo-random sequence, sums in a fixed
//! order). They need not match the reference's NumPy draws: the build
//! publishes what it made as `.npy` files, and readers route with those.

use sf_manifest::format::npy::Matrix;

/// At most this many Lloyd iterations (the reference's bound).
const MAX_ITERATIONS: usize = 100;
/// Training stops once no centroid moves by more than this in any
/// component.
const TOLERANCE: f32 = 1e-6;

/// `k` centroids for `sample` (one vector per row): k-means++ seeding,
/// then Lloyd iterations comparing squared Euclidean distances (whatever
/// metric the snapshot searches with, as the reference trains), until no
/// centroid moves by more than 1e-6 or after 100 iterations. A cluster that
/// loses all its vectors keeps its centroid. With fewer distinct vectors
/// than `k`, some centroids repeat (their shards stay empty).
pub fn train_centroids(sample: &Matrix, k: usize, seed: u64) -> Result<Matrix, String> {
    let (n, dim) = (sample.rows, sample.cols);
    if k == 0 {
        return Err("cannot train zero centroids".into());
    }
    if n == 0 || dim == 0 {
        return Err("cannot train centroids on an empty sample".into());
    }
    if sample.values.len() != n * dim {
        return Err(format!(
            "the sample holds {} values, not {n} x {dim}",
            sample.values.len()
        ));
    }
    if let Some(i) = sample.values.iter().position(|x| !x.is_finite()) {
        return Err(format!(
            "sample vector {} has a component that is not finite ({})",
            i / dim,
            sample.values[i]
        ));
    }
    let mut rng = Rng::new(seed);
    let mut centroids = seed_centroids(sample, k, &mut rng);
    let mut assignment = vec![usize::MAX; n];
    for _ in 0..MAX_ITERATIONS {
        let mut changed = false;
        for (i, slot) in assignment.iter_mut().enumerate() {
            let nearest = nearest(&centroids, sample.row(i));
            changed |= *slot != nearest;
            *slot = nearest;
        }
        let mut sums = vec![0f64; k * dim];
        let mut counts = vec![0usize; k];
        for (i, &c) in assignment.iter().enumerate() {
            counts[c] += 1;
            for (s, x) in sums[c * dim..(c + 1) * dim].iter_mut().zip(sample.row(i)) {
                *s += f64::from(*x);
            }
        }
        let mut moved = 0f32;
        for c in 0..k {
            if counts[c] == 0 {
                continue;
            }
            let row = &mut centroids.values[c * dim..(c + 1) * dim];
            for (v, s) in row.iter_mut().zip(&sums[c * dim..(c + 1) * dim]) {
                let mean = (*s / counts[c] as f64) as f32;
                moved = moved.max((mean - *v).abs());
                *v = mean;
            }
        }
        if !changed || moved <= TOLERANCE {
            break;
        }
    }
    Ok(centroids)
}

/// `bits` hyperplanes of `dim` standard-normal components.
pub fn random_hyperplanes(bits: usize, dim: usize, seed: u64) -> Matrix {
    let mut rng = Rng::new(seed);
    Matrix {
        rows: bits,
        cols: dim,
        values: (0..bits * dim).map(|_| rng.normal() as f32).collect(),
    }
}

/// k-means++: the first centroid uniformly, each next one with a
/// probability proportional to its squared distance to the nearest chosen.
fn seed_centroids(sample: &Matrix, k: usize, rng: &mut Rng) -> Matrix {
    let (n, dim) = (sample.rows, sample.cols);
    let mut values = Vec::with_capacity(k * dim);
    values.extend_from_slice(sample.row(rng.below(n)));
    let mut nearest_sq: Vec<f64> = (0..n).map(|i| squared(sample.row(i), &values[..dim])).collect();
    for _ in 1..k {
        let total: f64 = nearest_sq.iter().sum();
        let pick = if total > 0.0 {
            let mut target = rng.unit() * total;
            let mut pick = n - 1;
            for (i, d) in nearest_sq.iter().enumerate() {
                if target < *d {
                    pick = i;
                    break;
                }
                target -= d;
            }
            pick
        } else {
            // Every vector sits on a chosen centroid.
            rng.below(n)
        };
        let row = sample.row(pick);
        values.extend_from_slice(row);
        for (i, d) in nearest_sq.iter_mut().enumerate() {
            *d = d.min(squared(sample.row(i), row));
        }
    }
    Matrix {
        rows: k,
        cols: dim,
        values,
    }
}

/// The nearest centroid by squared distance, the lowest index on ties.
fn nearest(centroids: &Matrix, v: &[f32]) -> usize {
    let mut best = (0, f64::INFINITY);
    for c in 0..centroids.rows {
        let d = squared(centroids.row(c), v);
        if d < best.1 {
            best = (c, d);
        }
    }
    best.0
}

fn squared(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = f64::from(*x) - f64::from(*y);
            d * d
        })
        .sum()
}

/// SplitMix64: small, fast and the same everywhere; plenty for seeding
/// and hyperplanes (nothing here needs cryptographic randomness).
struct Rng {
    state: u64,
    spare: Option<f64>,
}

impl Rng {
    fn new(seed: u64) -> Self {
        Rng {
            state: seed,
            spare: None,
        }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n - 1)
    }

    /// Standard normal (Box-Muller, both values used).
    fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // 1 - unit() is in (0, 1], so the logarithm is finite.
        let (u, v) = (1.0 - self.unit(), self.unit());
        let r = (-2.0 * u.ln()).sqrt();
        let theta = std::f64::consts::TAU * v;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: &[Vec<f32>]) -> Matrix {
        Matrix {
            rows: rows.len(),
            cols: rows[0].len(),
            values: rows.concat(),
        }
    }

    /// Three tight blobs far apart: one centroid lands in each, at its
    /// mean, whatever the seed.
    #[test]
    fn centroids_find_separated_clusters() {
        let centres = [[0.0f32, 0.0], [100.0, 0.0], [0.0, 100.0]];
        let mut rows = Vec::new();
        for (i, c) in centres.iter().enumerate() {
            for j in 0..20 {
                let off = (j as f32 - 9.5) * 0.01 * (i as f32 + 1.0);
                rows.push(vec![c[0] + off, c[1] - off]);
            }
        }
        let sample = matrix(&rows);
        for seed in [0, 1, 42, 7777] {
            let got = train_centroids(&sample, 3, seed).expect("train");
            let mut found: Vec<usize> = (0..3)
                .map(|c| {
                    let row = got.row(c);
                    (0..3)
                        .find(|i| (row[0] - centres[*i][0]).abs() < 1e-3 && (row[1] - centres[*i][1]).abs() < 1e-3)
                        .unwrap_or_else(|| panic!("seed {seed}: centroid {row:?} is at no blob's mean"))
                })
                .collect();
            found.sort_unstable();
            assert_eq!(found, vec![0, 1, 2], "seed {seed}");
        }
    }

    #[test]
    fn training_is_deterministic_for_a_seed_and_varies_with_it() {
        let mut rng = Rng::new(3);
        let rows: Vec<Vec<f32>> = (0..200)
            .map(|_| (0..4).map(|_| rng.normal() as f32).collect())
            .collect();
        let sample = matrix(&rows);
        let a = train_centroids(&sample, 5, 42).expect("a");
        assert_eq!(a, train_centroids(&sample, 5, 42).expect("b"));
        assert_ne!(a, train_centroids(&sample, 5, 43).expect("c"));
        assert_eq!((a.rows, a.cols), (5, 4));
        assert!(a.values.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn fewer_distinct_vectors_than_centroids_repeat_centroids() {
        let sample = matrix(&[vec![1.0, 1.0], vec![1.0, 1.0], vec![2.0, 2.0]]);
        let got = train_centroids(&sample, 4, 42).expect("train");
        for c in 0..4 {
            let row = got.row(c);
            assert!(row == [1.0, 1.0] || row == [2.0, 2.0], "{row:?}");
        }
    }

    #[test]
    fn bad_samples_are_refused() {
        let sample = matrix(&[vec![1.0, f32::NAN]]);
        assert!(train_centroids(&sample, 1, 0).expect_err("nan").contains("not finite"));
        assert!(train_centroids(&matrix(&[vec![1.0]]), 0, 0).is_err());
        let empty = Matrix {
            rows: 0,
            cols: 2,
            values: vec![],
        };
        assert!(train_centroids(&empty, 1, 0).is_err());
    }

    #[test]
    fn hyperplanes_are_standard_normal_and_seeded() {
        let h = random_hyperplanes(64, 128, 42);
        assert_eq!((h.rows, h.cols, h.values.len()), (64, 128, 64 * 128));
        assert_eq!(h, random_hyperplanes(64, 128, 42));
        assert_ne!(h, random_hyperplanes(64, 128, 41));
        let n = h.values.len() as f64;
        let mean = h.values.iter().map(|x| f64::from(*x)).sum::<f64>() / n;
        let var = h.values.iter().map(|x| (f64::from(*x) - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }
}

//! STUB (replaced by the hashkit branch): key → server index.
use super::Spec;

#[derive(Debug)]
pub struct Placement {
    live: Vec<usize>,
}

impl Placement {
    pub fn new(_spec: &Spec, live: &[bool]) -> Placement {
        Placement {
            live: (0..live.len()).filter(|&i| live[i]).collect(),
        }
    }

    pub fn server_for(&self, key: &[u8]) -> Option<usize> {
        if self.live.is_empty() {
            return None;
        }
        let mut h: u32 = 0x811c9dc5;
        for &b in key {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x01000193);
        }
        Some(self.live[h as usize % self.live.len()])
    }
}

//! Keep only some classes of a data set, relabelled `0..k` in the order given
//! (`data.classes = [5, 6, 7, 8, 9]`): e.g. pretrain on Fashion-MNIST classes 0–4 and fine-tune
//! on 5–9 for transfer learning without ImageNet.

use std::sync::Arc;

use super::Dataset;

impl Dataset {
    /// The items whose label is in `keep`, in this view's order, with label `keep[i]` renamed
    /// `i` (and class names to match). Labels outside the class list are ignored.
    pub fn select_classes(&self, keep: &[usize]) -> Dataset {
        let mut map =
            vec![-1i64; self.labels.iter().copied().max().map_or(0, |m| m as usize + 1).max(keep.len())];
        for (new, &old) in keep.iter().enumerate() {
            if old < map.len() {
                map[old] = new as i64;
            }
        }
        let labels: Vec<i64> = self
            .labels
            .iter()
            .map(|&l| usize::try_from(l).ok().and_then(|l| map.get(l).copied()).unwrap_or(-1))
            .collect();
        let indices = self.indices.iter().copied().filter(|&r| labels[r] >= 0).collect();
        let classes = keep
            .iter()
            .map(|&c| self.classes.get(c).cloned().unwrap_or_else(|| format!("class {c}")))
            .collect();
        Dataset {
            images: Arc::clone(&self.images),
            channels: self.channels,
            height: self.height,
            width: self.width,
            labels: Arc::new(labels),
            classes,
            indices,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_classes_remain_relabelled_in_order() {
        let images: Vec<u8> = (0..6u8).collect();
        let ds = Dataset::new(
            images,
            (1, 1, 1),
            vec![0, 1, 2, 3, 2, 1],
            (0..4).map(|c| format!("c{c}")).collect(),
        );
        let sel = ds.select_classes(&[2, 1]);
        assert_eq!(sel.len(), 4);
        let got: Vec<(u8, i64)> = (0..sel.len()).map(|i| (sel.image(i)[0], sel.label(i))).collect();
        assert_eq!(got, vec![(1, 1), (2, 0), (4, 0), (5, 1)]);
        assert_eq!(sel.classes, vec!["c2".to_string(), "c1".to_string()]);
        assert!(Arc::ptr_eq(&ds.images, &sel.images));
    }
}

//! SVG charts drawn with plotters: stage scores, bpb against the baseline ladder, index against cost.

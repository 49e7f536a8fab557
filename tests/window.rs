//! The rolling window's hot path: adding a second and laying the window out for the head
//! reuse the buffers allocated at construction.

use tspm_edge::window::{HeadView, SecondInfo, Window};

use crate::util::alloc::allocations_during;

#[test]
fn window_push_and_fill_allocate_nothing() {
    // Rows as long as the head's per-second part gives (20 x 512 + 14).
    let mut window = Window::new(60, 10_254);
    let mut view = HeadView::new(60, 10_254, 10_254 - 7_168..10_254, 0..3_598);
    let row = vec![0.5f32; 10_254];
    // Wrap around the ring several times, filling the view each second as an ask would.
    let (allocs, ()) = allocations_during(|| {
        for index in 0..200 {
            let info = SecondInfo {
                index,
                audio: true,
                video: !index.is_multiple_of(3),
            };
            window.push(info, &row);
            window.fill(&mut view);
        }
    });
    assert_eq!(allocs, 0, "push/fill allocated {allocs} times");
    assert_eq!(window.len(), 60);
    assert_eq!(view.index[0], 140);
    assert_eq!(view.index[59], 199);
    assert!(view.valid.iter().all(|&v| v == 1.0));
}

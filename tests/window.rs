//! The rolling window's hot path: adding a second and laying the window out for the head
//! reuse the buffers allocated at construction.

use tspm_edge::window::{HeadView, SecondInfo, Window};

use crate::util::alloc::allocations_during;

#[test]
fn window_push_and_fill_allocate_nothing() {
    let mut window = Window::new(60);
    let mut view = HeadView::new(60);
    let audio = vec![0.5f32; 1024];
    let visual = vec![0.25f32; 1280];
    let patches = vec![0.125f32; 14 * 1280];
    // Wrap around the ring several times, filling the view each second as an ask would.
    let (allocs, ()) = allocations_during(|| {
        for index in 0..200 {
            let info = SecondInfo {
                index,
                audio: true,
                video: !index.is_multiple_of(3),
            };
            window.push(info, &audio, &visual, &patches);
            window.fill(&mut view);
        }
    });
    assert_eq!(allocs, 0, "push/fill allocated {allocs} times");
    assert_eq!(window.len(), 60);
    assert_eq!(view.index[0], 140);
    assert_eq!(view.index[59], 199);
    assert!(view.valid.iter().all(|&v| v == 1.0));
}

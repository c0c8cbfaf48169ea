"""What each tab does, apart from its layout: start, resume, the job body and the tick, testable without a page."""

"""board: what puts the accelerator on a board (the host link over a UART; the board top to come)"""

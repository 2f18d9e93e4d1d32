"""The board link end to end in simulation: the driver (`firmware.driver`) over `firmware.board.BoardTransport`, bytes
on the UART of the simulated board (`hw.board.system.BoardSystem` in Verilator: bridge, arbiter, SDRAM controller,
accelerator; the chip and the host's end of the UART native, `hw.sim.native_board`), as on a ULX3S."""

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from firmware.board import RESIDENT_TAG_BYTES, LinkError, resident_tag
from firmware.run import run_inference
from firmware.sim import SimulatedBoard, accelerator_for, simulate
from golden.config import accelerator_preset, model_preset
from golden.float_model import M3ViT, quantize_model
from golden.images import natural_images
from golden.quantize import quantize_image
from hw.memory.sdram import SDRAMPins
from hw.memory.sdram_chip import ULX3S_SDRAM

TINY, ACCEL = model_preset("tiny"), accelerator_preset("4x4")


@pytest.mark.long(100)
def test_an_inference_over_the_uart_on_the_simulated_board_is_bit_exact():
    """One whole inference (backbone, then the head) for a task, the weights preloaded as on a board that holds
    them: bit-exact against the golden model; then the resident upload over the link itself: written once, skipped
    while the board's tag matches, written again when the data change, refused where it would reach the tag."""
    quantized = quantize_model(M3ViT.trained_like(TINY, seed=2), natural_images(TINY, 8, 12))
    image = quantize_image(quantized, natural_images(TINY, 1, 5)[0])
    (report,) = run_inference(quantized, ACCEL, image, [1], simulator=SimulatedBoard(preload=True))["tasks"]
    assert report["bit_exact"] and report["output_bit_exact"] and report["head_error"] == "NONE"
    # the SDRAM is slower than the ideal DRAM of the other simulators: the loader waits
    assert report["exposed"]["loader"] > 0 and report["cycles"] > report["floor_cycles"]

    rng = np.random.default_rng(3)
    weights, other = rng.integers(0, 256, 2048, np.uint8).tobytes(), rng.integers(0, 256, 2048, np.uint8).tobytes()
    address = 1 << 20

    async def host(transport):
        written = [await transport.upload(address, weights), await transport.upload(address, weights)]
        held = await transport.read_dram(address, len(weights))
        tag = await transport.read_dram(transport.tag_address, RESIDENT_TAG_BYTES)
        written.append(await transport.upload(address, other))
        with pytest.raises(LinkError, match="resident tag"):
            await transport.upload(transport.tag_address - 1024, weights)
        return written, held, tag, await transport.read_dram(address, len(other)), transport.sdram

    written, held, tag, after, sdram = simulate(accelerator_for(TINY, ACCEL), host, 0, simulator="board")
    assert written == [True, False, True]
    assert held == weights and tag == resident_tag(address, weights) and after == other
    assert sdram.read(address, len(other)) == other          # the backdoor sees what the link wrote
    assert sdram.read(sdram.size - RESIDENT_TAG_BYTES, RESIDENT_TAG_BYTES) == resident_tag(address, other)


def test_the_serial_pipe_and_a_board_that_does_not_answer(capsys):
    """The board transport's pipe on a serial port (pyserial's loop-back URL stands for the port): bytes go out and
    come back; a reply cut short, a port that cannot be opened, and a board that answers nonsense are clear
    errors."""
    import asyncio

    from firmware.board import BridgeLink, SerialPipe
    from m3vit.cli import main

    pipe = SerialPipe("loop://", timeout=0.05)

    async def exchange():
        await pipe.send(b"M3ViT")
        echoed = await pipe.receive(5)
        with pytest.raises(LinkError, match="0 of 1 bytes"):
            await pipe.receive(1)
        # a loop-back "board" answers each request with the request itself: not a status the bridge sends
        with pytest.raises(LinkError, match="register read at 0x4: the bridge answered status 82"):
            await BridgeLink(pipe, 16).read32(4)
        return echoed
    assert asyncio.run(exchange()) == b"M3ViT"
    assert main(["run", "--board", "/nonexistent/tty", "--task", "semseg"]) == 2
    assert "cannot open the serial port /nonexistent/tty" in capsys.readouterr().err


class _Pins(wiring.Component):
    """The SDRAM's pins driven straight from inputs (the test plays the controller); DQ read back one cycle late."""

    def __init__(self, chip):
        self.pins = ("cke", "cs_n", "ras_n", "cas_n", "we_n", "ba", "a", "dq_o", "dq_oe", "dqm")
        signature = SDRAMPins(chip)
        super().__init__({"sdram": Out(signature), "dq_read": Out(chip.data_width),
                          **{name: In(signature.members[name].shape, init=signature.members[name].init)
                             for name in self.pins}})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [getattr(self.sdram, name).eq(getattr(self, name)) for name in self.pins]
        m.d.sync += self.dq_read.eq(self.sdram.dq_i)
        return m


def test_the_native_sdram_keeps_words_where_the_controller_puts_them_and_catches_bank_rules():
    """The native chip (the simulated board's) against commands played on its pins: a word written at (row, bank,
    column) reads back CL cycles after READ and sits at the controller's byte address (word address = column |
    bank | row); each rule it keeps raises with its name."""
    from hw.sim.native_board import NativeSdram
    from hw.sim.sdram import Command, SDRAMTimingError
    from hw.sim.verilator import Verilated

    design = _Pins(ULX3S_SDRAM)
    row, bank, column, word = 4321, 2, 300, 0xBEEF
    address = 2 * ((row << 2 | bank) << 9 | column)

    def play(model, commands):
        """(command, ba, a, dq or None) a cycle; DQ as the chip drives it each cycle after."""
        seen = []
        for command, ba, a, dq in commands:
            for name, value in zip(("ras_n", "cas_n", "we_n"), command):
                model.set(getattr(design, name), value)
            model.set(design.cs_n, command == Command.NOP)
            model.set(design.ba, ba)
            model.set(design.a, a)
            model.set(design.dq_oe, dq is not None)
            model.set(design.dq_o, dq or 0)
            model.tick()
            seen.append(model.get(design.dq_read))
        return seen

    def fresh():
        model = Verilated(design, "sdram_pins")
        model.set(design.cke, 1)                      # an input: the model starts it at 0, not at its init
        return model, NativeSdram(model, design.sdram, ULX3S_SDRAM)

    mode_cl2, nop = 2 << 4, (Command.NOP, 0, 0, None)
    model, sdram = fresh()
    seen = play(model, [(Command.LOAD_MODE, 0, mode_cl2, None), (Command.ACTIVE, bank, row, None),
                        (Command.WRITE, bank, column, word), (Command.READ, bank, column, None), nop, nop, nop])
    assert seen[3 + 2] == word and seen[3 + 1] == seen[3 + 3] == 0      # on DQ CL = 2 cycles after READ, for one
    assert sdram.read(address, 2) == word.to_bytes(2, "little")
    sdram.write(address, b"\x34\x12")                 # and the backdoor writes where READ finds it
    seen = play(model, [(Command.READ, bank, column, None), nop, nop, nop])
    assert seen[2] == 0x1234
    for commands, rule in [
        ([(Command.ACTIVE, 0, 1, None)], "init"),                                           # before LOAD MODE
        ([(Command.LOAD_MODE, 0, mode_cl2 | 3, None)], "mode"),                              # burst of 8
        ([(Command.LOAD_MODE, 0, mode_cl2, None), (Command.READ, 1, 0, None)], "bank"),      # a closed bank
        ([(Command.LOAD_MODE, 0, mode_cl2, None), (Command.ACTIVE, 1, 0, None), (Command.REFRESH, 0, 0, None)],
         "bank"),                                                                            # a bank open
        ([(Command.LOAD_MODE, 0, mode_cl2, None), (Command.ACTIVE, 1, 0, None), (Command.READ, 1, 0, None), nop,
          (Command.NOP, 0, 0, 7)], "bus"),                                                   # DQ over read data
    ]:
        model, _ = fresh()
        with pytest.raises(SDRAMTimingError) as caught:
            play(model, commands)
        assert caught.value.rule == rule

"""`make demo`: placeholder until the simulator lands (prints Reno's closed-form window)."""

from trickles.reno import tcp_cwnd


def main() -> None:
    print("TCPCwnd(k), base 1, startCwnd 3, ssthresh 16:")
    print(" ".join(str(tcp_cwnd(k, 1, 3, 16)) for k in range(1, 60)))


if __name__ == "__main__":
    main()
